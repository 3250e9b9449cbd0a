"""The transform's last step: each batch's Outcomes -> prediction rows and failure rows."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.pvalue import TaggedOutput

from crossinfer import _blocks, _plan
from crossinfer._handler import BundleFreeze, Outcomes, describe
from crossinfer._rows import to_json
from crossinfer._schemas import Failure

FAILURES = "failures"


def failure(row: Any, stage: str, error: str) -> TaggedOutput:
    return TaggedOutput(FAILURES, Failure(to_json(row), stage, error))


class Postprocess(beam.DoFn):
    """Outcomes of a batch -> one prediction row or one failure per input row."""

    def __init__(self, plan: _plan.Plan) -> None:
        self._post = plan.postprocess
        self._many = plan.postprocess_many
        self._passthrough = plan.passthrough
        self._result_names = list(plan.result_names)
        self._type = plan.prediction_type.user_type or beam.Row

    def start_bundle(self) -> None:
        if not getattr(self, "_frozen", False):  # still open: the last bundle failed
            BundleFreeze.enter()
            self._frozen = True

    def finish_bundle(self) -> None:
        if getattr(self, "_frozen", False):
            self._frozen = False
            BundleFreeze.exit()

    def process(self, outcomes: Any):
        if not isinstance(outcomes, Outcomes):
            outcomes = outcomes[1]  # keyed: (model key, outcomes)
        rows = outcomes.rows
        for i, stage, error in outcomes.failed:
            yield failure(rows[i], stage, error)
        if not outcomes.scored:
            return
        columns, error = None, "the model output is not an array of numbers"
        if self._many is not None and isinstance(outcomes.output, np.ndarray):
            try:
                columns = self._many(outcomes.output, outcomes.model_id)
            except Exception as e:  # pylint: disable=broad-except
                error = describe(e)  # e.g. outputs that are not numbers: row by row, below
        if isinstance(rows, _blocks.Block):  # blocks=True: one prediction block
            if columns is None:
                columns = ({}, dict.fromkeys(range(len(outcomes.scored)), error))
            prediction, failed = _blocks.prediction(outcomes, *columns, self._passthrough,
                                                    self._type)
            for i, error in failed:
                yield failure(rows[i], "postprocess", error)
            if prediction is not None:
                yield prediction
            return
        if columns is not None:
            try:
                cols = [[getattr(rows[i], name) for i in outcomes.scored]
                        for name in self._passthrough]
            except Exception:  # pylint: disable=broad-except
                cols = None  # e.g. a row without a passthrough field: row by row, below
            if cols is not None:
                cols += [columns[0][name] for name in self._result_names]
                yield from self._from_columns(outcomes, cols, columns[1])
                return
        yield from self._one_by_one(outcomes)

    def _from_columns(self, outcomes: Outcomes, cols: list[list], errors: dict[int, str]):
        """Every row's prediction or failure from the columns of its fields, one at a time
        (so each can be consumed and freed before the next is made)."""
        rows, scored = outcomes.rows, outcomes.scored
        cols.append([outcomes.model_id] * len(scored))
        make = self._type._make if self._type is not beam.Row else None
        names = (*self._passthrough, *self._result_names, "model_id")
        for j, values in enumerate(zip(*cols)):
            if errors and j in errors:
                yield failure(rows[scored[j]], "postprocess", errors[j])
            elif make is not None:
                yield make(values)
            else:
                yield beam.Row(**dict(zip(names, values)))

    def _one_by_one(self, outcomes: Outcomes):
        rows, model_id = outcomes.rows, outcomes.model_id
        for i, inference in zip(outcomes.scored, outcomes.output):
            row = rows[i]
            try:
                fields = {name: getattr(row, name) for name in self._passthrough}
                fields.update(self._post(inference, model_id, row))
                fields["model_id"] = model_id
                yield self._type(**fields)
            except Exception as e:  # pylint: disable=broad-except
                yield failure(row, "postprocess", describe(e))
