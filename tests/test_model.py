"""Loading a model from `module:Class`, and what its author gets wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from support.sample_models import SizeModel

from emotion import Model, ModelLoadError, Response, load_model
from emotion.contract import Options
from emotion.model import run_batch, run_sample, spec_of
from emotion.models.mock import MockModel


def test_loads_an_instance_of_the_named_class() -> None:
    model = load_model("support.sample_models:SizeModel")

    assert isinstance(model, SizeModel)
    assert model.name == "SizeModel"


def test_the_shipped_mock_model_loads() -> None:
    assert isinstance(load_model("emotion.models.mock:MockModel"), MockModel)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sample_models", "model 'sample_models' is not of the form 'package.module:ClassName'"),
        ("sample_models:", "is not of the form"),
        (":SizeModel", "is not of the form"),
        ("no_such_module:Model", "model module 'no_such_module' not found"),
        ("sample_models.nested:Model", "model module 'sample_models.nested' not found"),
        (
            "support.sample_models:Missing",
            "module 'support.sample_models' has no attribute 'Missing'",
        ),
        (
            "support.sample_models:NotAModel",
            "support.sample_models:NotAModel is not a subclass of emotion.Model",
        ),
        (
            "support.sample_models:time",
            "support.sample_models:time is not a subclass of emotion.Model",
        ),
        (
            "support.sample_models:AbstractModel",
            "support.sample_models:AbstractModel does not implement process_sample",
        ),
        (
            "support.sample_models:CrashingInitModel",
            "support.sample_models:CrashingInitModel() failed: RuntimeError: no GPU here",
        ),
    ],
)
def test_bad_specs_fail_with_one_line_naming_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model(spec)

    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_dependency_of_the_model_module_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "needs_torch.py"
    module.write_text("import torch_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ModelLoadError) as caught:
        load_model("needs_torch:Model")

    assert str(caught.value) == (
        "model module 'needs_torch' failed to import: No module named 'torch_that_is_not_installed'"
    )


def test_subclasses_are_named_after_their_class_unless_they_say_otherwise() -> None:
    class Plain(Model):
        def process_sample(self, image):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    class Named(Plain):
        name = "fer-2013"

    class Child(Named):
        pass

    assert (Plain.name, Named.name, Child.name) == ("Plain", "fer-2013", "Child")


def test_spec_of_names_a_model_another_process_can_load() -> None:
    spec = spec_of(SizeModel())

    assert spec == "support.sample_models:SizeModel"
    assert type(load_model(spec)) is SizeModel


def test_spec_of_refuses_a_model_no_other_process_can_import() -> None:
    class Local(Model):
        def process_sample(self, image: Image.Image) -> Response:
            return Response()

    with pytest.raises(ModelLoadError, match="define it in an importable module"):
        spec_of(Local())


def test_options_reach_a_model_that_declares_them_and_no_other() -> None:
    image = Image.new("RGB", (8, 8))
    seen: list[Options | None] = []

    class Plain(Model):
        def process_sample(self, image: Image.Image) -> Response:
            return Response()

    class Asks(Model):
        def process_sample(self, image: Image.Image, options: Options | None = None) -> Response:
            seen.append(options)
            return Response()

    run_sample(Plain(), image, Options(max_faces=1))
    run_sample(Asks(), image, Options(max_faces=1))
    run_sample(Asks(), image, None)
    run_batch(Asks(), [image, image], [Options(max_faces=2), None])

    assert seen == [Options(max_faces=1), Options(), Options(max_faces=2), Options()]


def test_a_model_cannot_claim_labels_the_contract_has_not() -> None:
    with pytest.raises(TypeError, match=r"Sly.labels names joy, which are not Expression fields"):

        class Sly(Model):
            labels = ("happiness", "joy")

            def process_sample(self, image: Image.Image) -> Response:
                return Response()
