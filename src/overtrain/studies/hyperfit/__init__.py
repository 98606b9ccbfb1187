"""Hyperfitting (Carlsson et al. 2025; docs/hyperfit.md): over-fitting a language model on a few sequences
until its training loss is near zero makes its greedy continuations less repetitive — is it more than
sharpening?

The study expands into runs (`plan`), per base-model seed (`seeds`, the replicates of every finding):

1. ``pretrain``: the base model (Shakespeare, byte-level BPE: no unknown token), unless `base_model` names a
   local Hugging Face checkpoint directory;
2. ``hyperfit_train``: the base hyperfitted on `train.sequences` sequences, and one run per ablation size,
   each for `train.epochs` epochs or — loss-matched — until its training loss reaches `train.until_loss`,
   evaluated before, during and after (`train`; citation blocking: `blocker`);
3. ``hyperfit``: this study's analysis (`analysis`). Per seed it decodes the base model with nucleus
   sampling and with pure temperature sampling at the τ whose validation entropy matches the hyperfitted
   model's (the sharpening control), and scores every setting on the same held-out prompts: TTR, novel TTR
   (copied spans removed), distinct-n, Self-BLEU, copies of the hyperfit set in tokens and in words, and
   the NLL under the base model and under a reference model (the next seed's base). The claims (`claims`)
   take one value per seed. Rows go to its ``evals.jsonl`` (``record``: ``comparison``,
   ``comparison_seed``, ``temperature``, ``claim``, ``sample``, ``run``) and ``probes.jsonl``
   (``generation`` rows of the base's sampled settings); the report (`report`) only reads them.

Config and presets: `config`, ``configs/hyperfit/``.
"""

from overtrain.studies import announce

__getattr__ = announce(
    __name__,
    kinds=("hyperfit", "hyperfit_train"),
    help="Hyperfitting (Carlsson et al. 2025): over-fit a pre-trained LM on a few sequences, compare its greedy text with the base's greedy, nucleus and entropy-matched sampling.",
)
