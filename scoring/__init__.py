"""Offline scorer for LPIRC result logs: every rule set, numpy and the standard library only.

    import scoring
    s = scoring.score_path("runs/2026-11-25T10-00-00-mnv2", "gt.csv", rules="ovic-2018")
    print(scoring.format_table([s]))

Nothing here imports lpirc, LiteRT, TensorFlow or Pillow, so it runs where only numpy is installed.
"""

from scoring._io import (ScoringError, ground_truth_notes, read_ground_truth, read_ground_truth_and_notes,
                         read_label_names, read_log, read_manifest, synset_index, synsets)
from scoring import groups
from scoring.core import match_answers, revise_label_notes, score_path
from scoring.records import MANIFEST_KEYS, RECORD_KEYS, Answer, Manifest, Record
from scoring.report import format_csv, format_table, ranks
from scoring.rules import (DEFAULT_A0, DEFAULT_IDLE_WATTS, DEFAULT_K, DEFAULT_MS_PER_IMAGE, DEFAULT_RULES,
                           DEFAULT_TIME_LIMIT_S, RULE_PARAMS, RULES, Evaluation, Rule, rule_params)

__all__ = [
    "DEFAULT_A0", "DEFAULT_IDLE_WATTS", "DEFAULT_K", "DEFAULT_MS_PER_IMAGE", "DEFAULT_RULES", "DEFAULT_TIME_LIMIT_S",
    "MANIFEST_KEYS", "RECORD_KEYS", "RULE_PARAMS", "RULES", "Answer", "Evaluation", "Manifest", "Record", "Rule",
    "ScoringError", "format_csv", "groups", "format_table", "ground_truth_notes", "match_answers", "ranks",
    "read_ground_truth", "read_ground_truth_and_notes", "read_label_names", "read_log", "read_manifest", "revise_label_notes",
    "rule_params", "score_path", "synset_index", "synsets",
]
