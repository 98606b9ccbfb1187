"""Catastrophic overtraining (Springer et al. 2025): pre-train at many budgets, fine-tune and perturb every
budget checkpoint, find the budget T* past which more pre-training hurts.

The study expands into runs (`plan`):

1. ``pretrain``: one run per seed, one checkpoint per token budget (WSD branches by default);
2. ``finetune``: every budget checkpoint x method x learning rate, on a task that differs from
   pre-training (a second HMM on the same vocabulary by default); records the in-distribution (task)
   loss and the pre-training loss after fine-tuning (forgetting);
3. ``probe``: Gaussian-perturbation sensitivity of every budget checkpoint, init-scale (canonical) and
   relative noise, K draws;
4. ``linear_theory``: the paper's two-layer linear model and its negative control (`theory`, seconds);
5. ``overtraining``: the analysis run (`analysis`), which depends on all of the above and stores the
   curves it read, inflection points T* with bootstrap CIs, Spearman(T, Δ), the claims and the
   recommendation (``record`` column: ``curve``, ``inflection``, ``trend``, ``monitor``, ``claim``,
   ``recommendation``). The report (`report`) only reads them.

Rerunning the study reuses every finished run (content-addressed), so a second ``make demo`` takes seconds.
The science and the measured results: docs/overtraining.md, docs/theory.md.
"""

from overtrain.studies import announce

__getattr__ = announce(
    __name__,
    kinds=("overtraining", "linear_theory"),
    help="Catastrophic overtraining (Springer et al. 2025): pre-train at many budgets, fine-tune and perturb "
    "every checkpoint, find T* past which more pre-training hurts.",
)
