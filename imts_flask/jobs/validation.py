"""A training job's evaluations on held-out data while it runs: the figures its record shows, and
the early stop that min_delta asks for.

LLaMA Factory evaluates (eval_strategy: steps) and, with early_stopping_steps, stops after that many
evaluations without any improvement; transformers' callback takes no threshold from LLaMA Factory.
With a min_delta the monitor counts as transformers would with that threshold: an evaluation is
better when its eval_loss is lower than the best so far by more than min_delta; `patience` of them
in a row that are not end the run through the graceful stop a SIGTERM gives (enable_jit_checkpoint),
which still ends on the best weights (load_best_model_at_end).
"""

import os

from ..llamafactory.trainer_log import EvalLossReader
from ..llamafactory.trainer_state import best_checkpoint
from .checkpoints import CHECKPOINT


class ValidationWatch:
    def __init__(self, output_dir, early_stopping=None):
        self.output_dir = output_dir
        self.reader = EvalLossReader(output_dir)
        early_stopping = early_stopping or {}
        self.patience = early_stopping.get("patience") or 0
        self.min_delta = early_stopping.get("min_delta") or 0.0
        self.best = None
        self.stalled = 0  # evaluations in a row that were not better by more than min_delta
        self.end_at_step = None  # the evaluation after which min_delta ended the run

    def read(self):
        """Read the evaluations logged since the last call; return the figures for the job's record
        ({eval_loss, best_eval_loss, best_checkpoint}), or None when there is no new evaluation."""
        new = self.reader.read()
        if not new:
            return None
        for step, loss in new:
            if self.best is None or self.best - loss > self.min_delta:
                self.stalled = 0
            else:
                self.stalled += 1
            self.best = loss if self.best is None else min(self.best, loss)
            if (
                self.min_delta
                and self.patience
                and self.stalled >= self.patience
                and self.end_at_step is None
            ):
                self.end_at_step = step
        figures = {"eval_loss": new[-1][1], "best_eval_loss": self.best}
        best = self._best_checkpoint()
        if best:
            figures["best_checkpoint"] = best
        return figures

    def should_end(self):
        """Whether min_delta's patience ran out: the monitor then ends the run gracefully."""
        return self.end_at_step is not None

    def _best_checkpoint(self):
        """The best checkpoint as the newest checkpoint's trainer_state.json names it (one small read)."""
        try:
            steps = [int(m.group(1)) for m in map(CHECKPOINT.fullmatch, os.listdir(self.output_dir)) if m]
        except OSError:
            return None
        if not steps:
            return None
        return best_checkpoint(os.path.join(self.output_dir, f"checkpoint-{max(steps)}"))
