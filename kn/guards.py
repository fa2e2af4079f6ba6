"""The guards' thresholds: what a run must show before a claim is judged on it (kn.claims' `Check`s),
and what kn.extraction's lr choice calls a finetune that learned its task. Fixed before the runs
they govern; below both modules, so that extraction does not import the claims layer above it.
"""

GUARD_TRAIN_QA = 80.0      # % of train_people's QAs answered: the finetune (or mixed) run learned its task
GUARD_MEMORIZED = 90.0     # % of bio values reproduced in the person's own bio: the knowledge is there
GUARD_PROBE_FIT = 200      # people a probe (kn.probe_select) is fit on, outside its validation slice
GUARD_PROBE_VALID = 50     # people of the validation slice that choose the probe's rank and weight decay
