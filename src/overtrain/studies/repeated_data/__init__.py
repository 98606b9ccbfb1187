"""Repeated data (Hernandez et al. 2022): a small subset repeated E times hurts the held-out text loss most
at an intermediate E, damages copying, and shrinks the effective model size.

The study expands into runs (`plan`):

1. ``pretrain``: one run per (model size, E, seed) on the `repeat` mixer: a fraction f of the training
   sequences comes from a subset of ``round(f·N/E)`` sequences placed exactly E times, the rest is unique
   (N training sequences in the fixed token budget). E = 1 is the no-repetition baseline at the same f.
   The unique language (`data`) is one where in-context copying pays: a Zipf-bigram text with copied
   spans mixed with [random block; same block] sequences, so induction heads form (docs/repeated_data.md);
2. ``probe``: on every final checkpoint, the `induction` probe (prefix-matching score per head, copying
   loss on repeated random blocks) and the `reference_loss` probe on split ``repeated`` (the loss on the
   repeated subset: how far it was memorised);
3. ``repeated_data``: the analysis run (`analysis`), after all of them. It decides the claims and stores
   what the report (`report`) shows; the scaling law and its inversion are `effective_size`.

Config and presets: `config`, ``configs/repeated_data/``. Rerunning the study reuses every finished run
(content-addressed); ``--workers 2`` runs two at once.
"""

from overtrain.studies import announce

__getattr__ = announce(
    __name__,
    kinds=("repeated_data",),
    help="Repeated data (Hernandez et al. 2022): a subset repeated E times at fixed total tokens; the held-out text loss peaks at an intermediate E, copying suffers, the model behaves like a smaller one.",
)
