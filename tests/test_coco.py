"""The COCO caption scorer wrapper: same numbers as pycocoevalcap, input checks, Java/SPICE errors, no leaked Java."""

from __future__ import annotations

import contextlib
import gc
import io
import os
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from simvlg_video.eval import coco
from simvlg_video.eval.coco import SPICE_CORENLP_JARS, SPICE_DIR, score_captions, to_coco_format

REFERENCES = {
    "guitar": ["A man is playing a guitar.", "Someone plays the guitar on stage."],
    "ball": ["A red ball rolls to the left.", "The ball moves left across the floor."],
    "cat": ["A cat sleeps on a sofa.", "A grey cat is sleeping."],
    "dog": ["A dog runs through the park.", "A brown dog is running on grass."],
}
WRONG = {
    "guitar": "a cat sleeps on a sofa",
    "ball": "",  # an empty caption is scored, not rejected
    "cat": "Ein Hund läuft – café naïve 日本語 🎉",  # unicode the tokenizer cannot all handle
    "dog": "a dog\rruns\u2028through the\x0cpark",  # line breaks that would shift the tokenizer's lines
}
METRICS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


def java_children() -> list[str]:
    """Command lines of this process's child processes that run Java (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        if parent == os.getpid() and "java" in cmdline:
            found.append(cmdline)
    return found


def pycocoevalcap_directly(references: dict, predictions: dict) -> dict[str, float]:
    """The scorers called as pycocoevalcap's own COCOEvalCap does, on the dicts `to_coco_format` builds."""
    gts, res = to_coco_format(references, predictions)
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res)
    meteor = Meteor()
    scores = dict(zip(METRICS[:4], bleu)) | {"METEOR": meteor.compute_score(gts, res)[0]}
    pipes = meteor.meteor_p.stdout, meteor.meteor_p.stderr
    del meteor  # pycocoevalcap's Meteor.__del__ stops its Java process but leaves these two pipes open
    for pipe in pipes:
        pipe.close()
    scores["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    return scores


@pytest.fixture(scope="module")
def identical_scores() -> dict[str, float]:
    return score_captions(REFERENCES, {clip: captions[0] for clip, captions in REFERENCES.items()})


@pytest.fixture(scope="module")
def wrong_scores() -> tuple[dict[str, float], list[str], str]:
    """Scores of WRONG, the Java child processes alive right after the call, and what the call printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        scores = score_captions(REFERENCES, WRONG)
    return scores, java_children(), printed.getvalue()


@pytest.mark.java
def test_identical_predictions_score_perfectly(identical_scores: dict[str, float]) -> None:
    assert list(identical_scores) == METRICS
    assert identical_scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert identical_scores["METEOR"] == pytest.approx(1.0)
    assert identical_scores["ROUGE-L"] == pytest.approx(1.0)
    assert all(isinstance(value, float) for value in identical_scores.values())


@pytest.mark.java
def test_wrong_predictions_score_lower(identical_scores: dict[str, float], wrong_scores: tuple) -> None:
    wrong, _, _ = wrong_scores
    assert list(wrong) == METRICS
    assert all(0.0 <= wrong[name] < identical_scores[name] for name in METRICS)
    assert identical_scores["CIDEr"] > 2 * wrong["CIDEr"] > 0.0


@pytest.mark.java
def test_same_numbers_as_pycocoevalcap(wrong_scores: tuple) -> None:
    wrong, _, _ = wrong_scores
    assert pycocoevalcap_directly(REFERENCES, WRONG) == wrong


@pytest.mark.java
def test_scoring_prints_nothing_and_leaves_no_java_process(wrong_scores: tuple) -> None:
    _, alive_after_call, printed = wrong_scores
    assert alive_after_call == []
    assert printed == ""


@pytest.mark.java
def test_the_java_check_finds_a_java_process_left_running() -> None:
    """Positive control for the no-leaked-Java checks: a METEOR scorer of pycocoevalcap's own, left running, is
    found as a Java child of this process, and is gone once stopped."""
    before = java_children()
    scorer = Meteor()
    pipes = scorer.meteor_p.stdout, scorer.meteor_p.stderr
    alive = java_children()
    del scorer  # pycocoevalcap's Meteor.__del__ stops its Java process
    gc.collect()
    for pipe in pipes:
        pipe.close()
    started = list((Counter(alive) - Counter(before)).elements())  # leaked ones of other tests may be alike
    assert len(started) == 1 and "meteor" in started[0]
    assert java_children() == before


class MeteorWhoseJavaDies(Meteor):
    """pycocoevalcap's METEOR scorer whose Java process ends before scoring, as when the JVM runs out of memory."""

    instances: ClassVar[list[Meteor]] = []

    def __init__(self) -> None:
        super().__init__()
        self.instances.append(self)
        self.meteor_p.kill()
        self.meteor_p.wait()


@pytest.mark.java
def test_meteor_process_dying_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coco, "Meteor", MeteorWhoseJavaDies)
    with pytest.raises(RuntimeError, match="METEOR's Java process exited"):
        coco.meteor_score({"a": ["a cat"]}, {"a": ["a cat"]})
    (scorer,) = MeteorWhoseJavaDies.instances
    assert not scorer.lock.locked()  # else Meteor.__del__ would block forever on it
    MeteorWhoseJavaDies.instances.clear()
    del scorer
    gc.collect()
    assert java_children() == []


def test_to_coco_format_puts_each_caption_on_one_line() -> None:
    gts, res = to_coco_format({"b": ["one\ntwo", "x"], "a": ["three"]}, {"a": "p\r\nq", "b": ""})
    assert gts == {"b": [{"caption": "one two"}, {"caption": "x"}], "a": [{"caption": "three"}]}
    assert res == {"b": [{"caption": ""}], "a": [{"caption": "p q"}]}


@pytest.mark.parametrize(
    ("references", "predictions", "error", "message"),
    [
        ({"a": ["x"]}, {"a": "x", "b": "y", "c": "z"}, ValueError, "2 prediction.*no references.*'b', 'c'"),
        ({"a": ["x"], "b": ["y"]}, {"a": "x"}, ValueError, "no prediction.*'b'"),
        ({"a": ["x"], "b": []}, {"a": "x", "b": "y"}, ValueError, r"references\['b'\] is empty"),
        ({"a": "a whole caption"}, {"a": "x"}, TypeError, r"references\['a'\] must be a list"),
        ({"a": ["x", None]}, {"a": "x"}, TypeError, r"references\['a'\] must hold strings"),
        ({"a": ["x"]}, {"a": ["x"]}, TypeError, r"predictions\['a'\] must hold strings"),
        ({}, {}, ValueError, "no captions"),
    ],
)
def test_bad_input_is_rejected_before_java_runs(references, predictions, error, message) -> None:
    with pytest.raises(error, match=message):
        score_captions(references, predictions)


def test_missing_java_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="needs Java"):
        score_captions({"a": ["a cat"]}, {"a": "a cat"})


@pytest.mark.java
def test_spice_without_corenlp_jars_is_a_clear_error() -> None:
    if all((SPICE_DIR / "lib" / name).is_file() for name in SPICE_CORENLP_JARS):
        pytest.skip("the CoreNLP jars are installed here, so SPICE can run")
    with pytest.raises(RuntimeError, match="SPICE needs the Stanford CoreNLP") as raised:
        score_captions({"a": ["a cat"]}, {"a": "a cat"}, spice=True)
    assert str(SPICE_DIR / "lib") in str(raised.value) and "eval.spice=false" in str(raised.value)
