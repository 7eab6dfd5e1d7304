"""The wire formats of evaluations: what to judge, the figures side by side, the sample rows."""

from marshmallow import RAISE, Schema, fields, validate

from .wire import (
    REQUIRED,
    WEIGHTS,
    DatasetField,
    JsonBoolean,
    NestedRequestSchema,
    RequestSchema,
    ResponseSchema,
)


class GenerationSchema(NestedRequestSchema):
    """`generation` of an evaluation: how the predictions of an sft model are generated."""

    max_new_tokens = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(1, 4096),
        metadata={"description": "default 128"},
    )
    temperature = fields.Float(
        allow_none=True,
        validate=validate.Range(0, 2),
        metadata={"description": "0 (default): greedy, the same output every time"},
    )
    top_p = fields.Float(allow_none=True, validate=validate.Range(0, 1, min_inclusive=False))
    top_k = fields.Integer(strict=True, allow_none=True, validate=validate.Range(0, 1000))
    repetition_penalty = fields.Float(allow_none=True, validate=validate.Range(0, 10, min_inclusive=False))


class EvaluationRequestSchema(RequestSchema):
    """POST /jobs/{id}/evaluations: judge a job's weights (and its base model) on a dataset."""

    dataset = DatasetField(required=True, error_messages=REQUIRED, metadata={"example": "demo_sft"})
    checkpoint = fields.String(
        load_default="final",
        allow_none=True,
        validate=WEIGHTS,
        metadata={"description": "the weights judged: final (default), best, or a checkpoint's name"},
    )
    max_samples = fields.Integer(
        strict=True, load_default=200, allow_none=True, validate=validate.Range(1, 10_000),
        metadata={"description": "rows of the dataset used, at most (default 200)"},
    )  # fmt: skip
    baseline = JsonBoolean(
        load_default=False, allow_none=True,
        metadata={"description": "judge the base model too, on the same rows, for the comparison"},
    )  # fmt: skip
    generation = fields.Nested(
        GenerationSchema, allow_none=True, metadata={"example": {"max_new_tokens": 64}}
    )


class SamplesQuerySchema(Schema):
    """GET .../evaluations/{id}/samples query: a page of rows."""

    class Meta:
        unknown = RAISE

    offset = fields.Integer(load_default=0, validate=validate.Range(0, 10**6))
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 100))


class FiguresSchema(ResponseSchema):
    bleu_4 = fields.Float(
        allow_none=True, metadata={"description": "BLEU-4 of the generated answers, 0..100"}
    )
    rouge_1 = fields.Float(allow_none=True, metadata={"description": "ROUGE-1 F, 0..100"})
    rouge_2 = fields.Float(allow_none=True, metadata={"description": "ROUGE-2 F, 0..100"})
    rouge_l = fields.Float(allow_none=True, metadata={"description": "ROUGE-L F, 0..100"})
    loss = fields.Float(allow_none=True, metadata={"description": "the mean loss on the rows' answers"})
    perplexity = fields.Float(allow_none=True, metadata={"description": "exp(loss)"})
    accuracy = fields.Float(
        allow_none=True, metadata={"description": "rm: chosen scored above rejected, 0..1"}
    )


class ComparisonSchema(ResponseSchema):
    tuned = fields.Nested(FiguresSchema, allow_none=True)
    base = fields.Nested(FiguresSchema, allow_none=True, metadata={"description": "with baseline"})
    difference = fields.Nested(FiguresSchema, allow_none=True, metadata={"description": "tuned minus base"})


class EvaluationSchema(ResponseSchema):
    evaluation_id = fields.String()
    job_id = fields.String()
    status = fields.String(metadata={"description": "pending, running, completed, failed or stopped"})
    stage = fields.String()
    dataset = fields.String()
    checkpoint = fields.String(metadata={"description": "final, or the checkpoint judged"})
    max_samples = fields.Integer()
    baseline = JsonBoolean()
    generation = fields.Dict(allow_none=True)
    phases = fields.List(fields.String(), metadata={"description": "each llamafactory-cli run, in order"})
    phase = fields.String(allow_none=True, metadata={"description": "the one running now"})
    phases_done = fields.List(fields.String())
    results = fields.Nested(ComparisonSchema)
    samples = fields.Integer(allow_none=True, metadata={"description": "predictions to page through"})
    tenant = fields.String(allow_none=True, metadata={"description": "the team it belongs to (its job's)"})
    created_by = fields.String(allow_none=True, metadata={"description": "the token that created it"})
    queue_position = fields.Integer(allow_none=True)
    waiting_for = fields.String(metadata={"description": "pending: capacity, quota or preemption"})
    held_by = fields.List(fields.String(), metadata={"description": "pending: the runs holding the slots"})
    held_by_others = fields.Integer(metadata={"description": "pending: how many more are other teams'"})
    attempt = fields.Integer()
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    log_path = fields.String()
    output_dir = fields.String()
    log_tail = fields.List(fields.String())


class EvaluationListSchema(ResponseSchema):
    job_id = fields.String()
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()
    evaluations = fields.List(fields.Nested(EvaluationSchema))


class SampleSchema(ResponseSchema):
    index = fields.Integer()
    prompt = fields.String(allow_none=True)
    label = fields.String(allow_none=True, metadata={"description": "the dataset's answer"})
    tuned = fields.String(allow_none=True, metadata={"description": "the tuned model's answer"})
    base = fields.String(allow_none=True, metadata={"description": "the base model's answer (baseline)"})


class SampleListSchema(ResponseSchema):
    evaluation_id = fields.String()
    job_id = fields.String()
    total = fields.Integer(allow_none=True)
    offset = fields.Integer()
    limit = fields.Integer()
    samples = fields.List(fields.Nested(SampleSchema))
