"""check_model: the default model and the mock keep the contract; each broken property is named.

Every broken model here breaks one property (tests/support/sample_models.py), and
its test checks the failure names that property, the image, and a call that makes
it again.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.sample_models import (
    CoinFlipModel,
    ConfiguredModel,
    FailingLoadModel,
    FussyModel,
    OverconfidentModel,
    OverflowingBoxModel,
    RememberingModel,
    UnnormalizedModel,
    UnsureModel,
    WanderingLandmarksModel,
    WholeImageModel,
)

from emotion import Model
from emotion.testing import PROPERTIES, SAMPLES, ContractBroken, Sample, check_model
from emotion.testing.samples import FORMATS

#: Every test here starts inference processes.
pytestmark = pytest.mark.subprocess

#: Two images, then check_model's run-wide checks: enough to break any property.
FEW = SAMPLES[:2]


def broken(model: Model | str, **options: object) -> ContractBroken:
    with pytest.raises(ContractBroken) as caught:
        check_model(model, **options)  # type: ignore[arg-type]
    return caught.value


def test_the_mock_keeps_the_contract() -> None:
    check_model("emotion.models.mock:MockModel")


def test_the_default_model_keeps_the_contract() -> None:
    from emotion.models.fer import FerModel  # the fer extra; the test extra installs it

    check_model(FerModel())


def test_a_model_that_keeps_every_property_passes_on_the_images_given() -> None:
    check_model(WholeImageModel(), samples=[Sample("group", mode="1", format="BMP", size=9)])


@pytest.mark.parametrize(
    ("model", "name", "sample"),
    [
        (OverconfidentModel(), "probabilities in [0, 1]", SAMPLES[0]),
        (UnnormalizedModel(), "probabilities sum to 1", SAMPLES[0]),
        (OverflowingBoxModel(), "boxes inside the image", SAMPLES[1]),
        (UnsureModel(), "confidence in [0, 1] where set", SAMPLES[0]),
        (WanderingLandmarksModel(), "landmarks inside the image", SAMPLES[0]),
        (CoinFlipModel(), "the same answer twice", SAMPLES[0]),
        (RememberingModel(), "no state kept between calls", SAMPLES[0]),
        (
            ConfiguredModel(happiness=0.25),
            "the same answer in an inference process as in this process",
            SAMPLES[0],
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_broken_property_is_named_with_its_image_and_how_to_reproduce(
    model: Model, name: str, sample: Sample
) -> None:
    failure = broken(model, samples=FEW)

    assert failure.property == name
    assert failure.sample == sample
    message = str(failure)
    assert message.startswith(f"model {model.name} breaks {name!r}\n")
    assert f"on {sample}\n" in message
    assert f"the image: emotion.testing.{sample!r}.encode()" in message


def test_the_reproduce_line_breaks_the_same_property_on_that_image_alone() -> None:
    failure = broken(OverflowingBoxModel(), samples=FEW)
    (line,) = [line for line in str(failure).splitlines() if "reproduce:" in line]
    call = line.split("reproduce: ", 1)[1]

    assert call == f"check_model(model, samples=[{failure.sample!r}])"
    again = eval(call, {"check_model": broken, "model": OverflowingBoxModel(), "Sample": Sample})
    assert (again.property, again.sample) == (failure.property, failure.sample)
    assert "face 0: box (0, 0, 600, 1320) is not within 0 <= x1 <= x2 <= 1320" in str(again)


@pytest.mark.parametrize(
    ("refused", "sample"),
    [
        ("L", Sample("portrait", mode="L")),
        ("RGBA", Sample("group", mode="RGBA")),
        ("P", Sample("portrait", mode="P")),
        ("CMYK", Sample("group", mode="CMYK")),
        ("I;16", Sample("portrait", mode="I;16")),
        ("tiny", Sample("group", size=12)),
        ("large", Sample("group", size=4096)),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_kind_of_image_is_asked_whatever_is_drawn(
    monkeypatch: pytest.MonkeyPatch, refused: str, sample: Sample
) -> None:
    monkeypatch.setenv("EMOTION_TEST_REFUSE", refused)  # the inference process inherits it

    failure = broken(FussyModel(), examples=0)

    assert (failure.property, failure.sample) == ("answers every kind of image", sample)
    assert "the call failed: INTERNAL: model FussyModel failed:" in str(failure)
    assert "the server's log has the model's traceback" in str(failure)


def test_samples_cover_every_mode_and_a_turned_file() -> None:
    assert {sample.mode for sample in SAMPLES} >= set(FORMATS) - {"LA", "1"}  # drawn too
    assert any(sample.orientation != 1 for sample in SAMPLES)


def test_a_model_whose_load_fails_breaks_loading_and_names_the_command() -> None:
    failure = broken(FailingLoadModel(), samples=FEW)

    assert failure.property == "loads in a fresh process"
    assert failure.sample is None
    assert "FailingLoadModel failed to load" in str(failure)
    assert "reproduce: emotion serve --model support.sample_models:FailingLoadModel" in str(failure)


def test_a_model_no_process_can_import_breaks_loading_unless_skipped() -> None:
    class LocalModel(WholeImageModel):
        pass

    failure = broken(LocalModel(), samples=FEW)

    assert failure.property == "loads in a fresh process"
    assert "define it in an importable module" in str(failure)
    check_model(LocalModel(), samples=FEW, skip={"loads in a fresh process"})


def test_a_skipped_property_is_not_checked_and_an_unknown_one_is_refused() -> None:
    check_model(UnnormalizedModel(), samples=FEW, skip={"probabilities sum to 1"})

    with pytest.raises(ValueError, match="no such property: sums to one"):
        check_model(UnnormalizedModel(), skip={"sums to one"})
    assert len(PROPERTIES) == len(set(PROPERTIES)) == 10


def test_more_examples_draw_more_images_and_the_same_seed_the_same_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from emotion.testing import conformance

    asked: list[Sample] = []
    check_one = conformance._Run.one

    def one(run: conformance._Run, sample: Sample) -> None:
        asked.append(sample)
        check_one(run, sample)

    monkeypatch.setattr(conformance._Run, "one", one)
    here = "the same answer in an inference process as in this process"

    check_model(WholeImageModel(), examples=3, skip={here})
    first = list(asked)
    asked.clear()
    check_model(WholeImageModel(), examples=3, skip={here})

    assert first[: len(SAMPLES)] == list(SAMPLES)
    assert len(first) == len(SAMPLES) + 3
    assert asked == first


def test_without_the_testing_extra_the_kit_imports_and_check_model_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['hypothesis'] = None  # not installed\n"
        "from emotion.testing import Sample, check_model, serve_model\n"
        "assert Sample('group', mode='P').encode()\n"
        "try:\n"
        "    check_model('emotion.models.mock:MockModel', skip={'loads in a fresh process'})\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )

    assert done.stdout.strip() == (
        "check_model draws images with hypothesis: pip install 'emotion[testing]'"
    )
