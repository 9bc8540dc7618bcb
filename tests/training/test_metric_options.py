"""``model.generation.rouge_stemmer`` reaches the evaluation metrics (stemming on by default)."""

from types import SimpleNamespace

import pytest

from hycam_pl.data.tokenizer import load_tokenizer
from hycam_pl.training import MultiTaskLM
from tests.tiny import tiny_byte_llama


@pytest.mark.parametrize(("generation", "stemmed"), [(None, True), ({"rouge_stemmer": False}, False)])
def test_rouge_stemmer_option_reaches_every_task_metric(generation, stemmed):
    model = MultiTaskLM(tiny_byte_llama(), method="cam", generation=generation)
    assert model.hparams["generation"]["rouge_stemmer"] is stemmed  # saved, so a reloaded run scores alike
    data = SimpleNamespace(task_names=("qa", "code"), tokenizer=load_tokenizer("byte"), scorers={})
    model._trainer = SimpleNamespace(datamodule=data, strategy=None)  # the parts of a Trainer setup reads
    model.setup("test")
    for metrics in (model.val_metrics, model.test_metrics):
        assert [metrics.generation[task].rouge.use_stemmer for task in data.task_names] == [stemmed] * 2
