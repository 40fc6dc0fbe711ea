"""Hyper-parameter tuning: ``kind: tune`` jobs whose trials are ordinary train jobs.

``controller`` drives each study from the scheduling loop; ``study`` is the Optuna side
(storage, sampler, pruner); ``plots`` draws Optuna's matplotlib figures. See
docs/tuning.md.
"""
