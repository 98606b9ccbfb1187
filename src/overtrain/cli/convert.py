"""The body of `overtrain convert`: pickle weights to safetensors, directory by directory, with the trust
note printed first (`overtrain.core.convert`)."""

from __future__ import annotations

from pathlib import Path

HELP = (
    "Convert checkpoint directories with pickle weights (pytorch_model*.bin) to safetensors "
    "(model*.safetensors), so audit and finetune can read them. The pickle is read with "
    "torch.load(weights_only=True): no code from it runs, but it is still untrusted input; convert only "
    "files you trust. Example: overtrain convert ckpts/old-step*"
)


def convert_command(dirs: list[Path], remove_bin: bool, console) -> None:
    """Convert every directory (all are checked to exist first, so a typo stops before any work)."""
    from overtrain.core.convert import TRUST_NOTE, convert_dir
    from overtrain.errors import CheckpointError

    missing = [str(d) for d in dirs if not Path(d).is_dir()]
    if missing:
        raise CheckpointError(f"checkpoint not found: {missing[0]}")
    console.print(f"note: {TRUST_NOTE}", markup=False)
    for d in dirs:
        c = convert_dir(Path(d), remove_bin=remove_bin)
        shared = f", copied {c.shared} tensor(s) that shared storage" if c.shared else ""
        kept = f"removed {', '.join(c.removed)}" if c.removed else "kept the .bin (--remove-bin deletes it)"
        console.print(
            f"{c.path}: wrote {', '.join(c.written)} ({c.tensors} tensors{shared}, read back identical); {kept}",
            markup=False,
        )
