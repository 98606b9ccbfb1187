"""Run kinds of the single-run studies (`overtrain.studies.single_run`).

Each such study registers its own run kind when its module is imported; importing the study registry's
modules here makes ``RUN_KINDS.get("random_features")`` work in any process (e.g. a spawned worker).
"""

from overtrain.registry import STUDIES

STUDIES.names()
