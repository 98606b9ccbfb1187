"""LoRA double descent and its cures (LoRA-GGPO, Chang et al. 2025; `docs/lora_dd.md`): a rank sweep ×
fine-tuning methods × seeds, in two optional parts (``mlp: null`` or ``lm: null`` leaves one out):

(a) ``mlp``: a frozen pre-trained digits MLP adapted by LoRA to a new task with label noise (`mlp_part`;
    nominal threshold rank 5n/(64 + 3H) = 5 at the defaults, measured r* = 6);
(b) ``lm``: a tiny language model pre-trained in the run on one HMM language, adapted by LoRA to a few
    sequences of another (`lm_part`; cross-entropy on stochastic targets).

Every cell of either part is one (method, rank, seed) fine-tune, trained to convergence at its rank's
tuned learning rate (rsLoRA scale by default) and measured by `sweep`. One run
computes every cell (`engine`); the analysis run decides the claims from its rows (`analysis`); the report
plots them (`report`). Config and presets: `config`, ``configs/lora_dd/``.
"""

from overtrain.studies import announce

__getattr__ = announce(
    __name__,
    kinds=("lora_dd", "lora_dd_analysis"),
    help="LoRA double descent and its cures (Chang et al. 2025): rank sweep of LoRA, Flat-LoRA, LoRA-GGPO, LoRA-MGPO and SAM on a frozen digits MLP and a tiny pre-trained LM.",
)
