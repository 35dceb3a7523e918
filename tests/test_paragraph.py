"""Paragraph evaluation (ActivityNet Captions): paragraphs in time order, two reference sets, the manifest
attributes that switch it on, and the same numbers as pycocoevalcap called directly."""

from __future__ import annotations

from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from simvlg_video.data.manifest import ClipRecord, parse_record
from simvlg_video.eval.paragraph import build_paragraphs, is_paragraph_set, paragraph_scores

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def segment(video: str, reference_set: str, index: int, start: float, end: float, caption: str) -> ClipRecord:
    raw = {
        "clip_id": f"{video}:{reference_set}:{index}",
        "video": f"{video}.mp4",
        "start": start,
        "end": end,
        "captions": [caption],
        "split": "val",
        "attributes": {"video_id": video, "reference_set": reference_set},
    }
    return parse_record(raw, Path("/data"), f"segment {index}")


# Listed out of time order on purpose; val_2 segments differ from val_1's, as in ActivityNet.
RECORDS = [
    segment("v_a", "val_1", 0, 10.0, 20.0, "The man sits down on a bench."),
    segment("v_a", "val_1", 1, 0.0, 10.0, "A man walks into the park."),
    segment("v_a", "val_2", 0, 0.0, 19.0, "A man walks in and sits on a bench."),
    segment("v_b", "val_1", 0, 5.0, 8.0, "She pours the coffee."),
    segment("v_b", "val_1", 1, 0.0, 5.0, "A woman grinds coffee beans."),
    segment("v_b", "val_1", 2, 0.0, 5.0, "Steam rises."),  # ties with segment 1: manifest order decides
    segment("v_b", "val_2", 0, 1.0, 4.0, "A woman makes café au lait."),
    segment("v_b", "val_2", 1, 4.0, 9.0, "She drinks it."),
]
CAPTIONS = {
    "v_a:val_1:0": "a man sits on a bench",
    "v_a:val_1:1": "a man walks in a park",
    "v_a:val_2:0": "a man walks and sits",
    "v_b:val_1:0": "a woman pours coffee",
    "v_b:val_1:1": "a woman grinds beans",
    "v_b:val_1:2": "steam rises",
    "v_b:val_2:0": "a woman makes coffee",
    "v_b:val_2:1": "she drinks",
}
REFERENCE_PARAGRAPHS = {
    "v_a": ["A man walks into the park. The man sits down on a bench.", "A man walks in and sits on a bench."],
    "v_b": [
        "A woman grinds coffee beans. Steam rises. She pours the coffee.",
        "A woman makes café au lait. She drinks it.",
    ],
}
PREDICTED_PARAGRAPHS = {
    "v_a": "a man walks in a park a man sits on a bench",
    "v_b": "a woman grinds beans steam rises a woman pours coffee",
}


def pycocoevalcap_scores(*pairs: tuple[dict[str, list[str]], dict[str, str]]) -> list[dict[str, float]]:
    """The COCO scorers called as pycocoevalcap's COCOEvalCap calls them, without our wrapper, for each
    (references, predictions) pair; one METEOR process serves all pairs (it takes seconds to start)."""
    meteor = Meteor()
    results = []
    for references, predictions in pairs:
        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
        res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in references})
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores = dict(zip(METRICS[:4], bleu)) | {"METEOR": meteor.compute_score(gts, res)[0]}
        scores["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
        scores["CIDEr"] = Cider().compute_score(gts, res)[0]
        results.append(scores)
    process = meteor.meteor_p
    del meteor  # its __del__ stops Java; close the pipes it leaves open
    process.stdout.close()
    process.stderr.close()
    return results


def test_paragraphs_follow_time_order_and_reference_sets():
    paragraphs = build_paragraphs(RECORDS, CAPTIONS)
    assert paragraphs.references == REFERENCE_PARAGRAPHS
    assert paragraphs.predictions == PREDICTED_PARAGRAPHS  # from val_1's segments only
    assert paragraphs.incomplete == []


def test_video_with_an_uncaptioned_proposal_is_incomplete():
    captions = {k: v for k, v in CAPTIONS.items() if k != "v_b:val_1:2"}
    captions.pop("v_a:val_2:0")  # val_2 captions are not part of the predicted paragraph
    paragraphs = build_paragraphs(RECORDS, captions)
    assert paragraphs.predictions == {"v_a": PREDICTED_PARAGRAPHS["v_a"]}
    assert paragraphs.incomplete == ["v_b"]
    assert paragraphs.references == REFERENCE_PARAGRAPHS  # references come from the manifest, captioned or not


def test_switch_is_the_manifest_attributes():
    assert is_paragraph_set(RECORDS)
    shapes = parse_record(
        {
            "clip_id": "s",
            "video": "s.mp4",
            "start": None,
            "end": None,
            "captions": ["a"],
            "split": "test",
            "attributes": {"shape": "circle", "colour": "red", "motion": "still"},
        },
        Path("/data"),
        "shapes",
    )
    assert not is_paragraph_set([*RECORDS, shapes])
    assert not is_paragraph_set([])


def test_segment_with_several_references_is_an_error():
    raw = RECORDS[0].to_dict() | {"captions": ["one", "two"]}
    with pytest.raises(ValueError, match=r"clip 'v_a:val_1:0': a segment needs exactly one reference caption"):
        build_paragraphs([parse_record(raw, Path("/data"), "x")], CAPTIONS)


@pytest.mark.java
def test_paragraph_scores_equal_pycocoevalcap_directly():
    """To the last digit (`score` adding them to the clip metrics is checked end to end in test_dataset_runs)."""
    scores = paragraph_scores(RECORDS, CAPTIONS)
    (direct,) = pycocoevalcap_scores((REFERENCE_PARAGRAPHS, PREDICTED_PARAGRAPHS))
    assert {name: scores[f"paragraph/{name}"] for name in METRICS} == direct
    assert (scores["paragraph/videos"], scores["paragraph/videos_incomplete"]) == (2, 0)
