"""Hyperfitting (Carlsson et al. 2025; docs/hyperfit.md): over-fitting a language model on a few sequences
until its training loss is near zero makes its greedy continuations less repetitive — is it more than
sharpening?

The study expands into runs (`plan`):

1. ``pretrain``: the base model (Shakespeare, byte-level BPE: no unknown token), unless `base_model` names a
   local Hugging Face checkpoint directory;
2. ``hyperfit_train``: the base hyperfitted on `train.sequences` sequences, and one run per ablation size
   (default: as many sequences as the batch size), each evaluated at epoch 0, every `train.eval_every`
   epochs and at the end (`train`; citation blocking: `blocker`);
3. ``hyperfit``: this study's analysis (`analysis`). It decodes the base model with nucleus sampling and
   with pure temperature sampling at the τ whose validation entropy matches the hyperfitted model's (the
   sharpening control), scores every setting on the same held-out prompts (TTR, distinct-n, Self-BLEU,
   copies of the hyperfit set, and the base model's loss on the continuations as a fluency proxy), and
   checks the claims with paired bootstrap CIs over prompts (or over validation / hyperfit windows;
   `claims`). Rows go to its ``evals.jsonl`` (``record``: ``comparison``, ``temperature``, ``claim``,
   ``sample``, ``run``) and ``probes.jsonl`` (``generation`` rows of the base's sampled settings); the
   report (`report`) only reads them.

Config and presets: `config`, ``configs/hyperfit/``.
"""

from overtrain.studies import announce

__getattr__ = announce(
    __name__,
    kinds=("hyperfit", "hyperfit_train"),
    help="Hyperfitting (Carlsson et al. 2025): over-fit a pre-trained LM on a few sequences, compare its greedy text with the base's greedy, nucleus and entropy-matched sampling.",
)
