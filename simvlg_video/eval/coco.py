"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, optionally SPICE) through pycocoevalcap.

The published video-captioning numbers use this scorer: Stanford's PTB tokenizer (Java) on references and
predictions, then each metric on the tokenised text. This module adds what the scorer leaves to its caller: checking
that every clip has references and a prediction, keeping one caption on one tokenizer line, closing METEOR's Java
process, and clear errors where Java or SPICE's CoreNLP jars are missing. Scores are fractions (CIDEr 0.85, not 85).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pycocoevalcap
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from simvlg_video.errors import UserError

CocoCaptions = dict[str, list[dict[str, str]]]
Tokenized = dict[str, list[str]]

PACKAGE_DIR = Path(pycocoevalcap.__path__[0])
SPICE_DIR = PACKAGE_DIR / "spice"
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SHOWN_IDS = 5


def to_coco_format(
    references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]
) -> tuple[CocoCaptions, CocoCaptions]:
    """Checked `(gts, res)` in the form PTBTokenizer takes: `{clip_id: [{"caption": text}, ...]}`.

    Both sides cover the same clip ids (in the references' order). Line breaks inside a caption become spaces:
    the tokenizer reads one caption per line, so a caption holding a line break would shift every later caption
    onto the wrong clip.
    """
    _check_same_ids(references, predictions)
    gts: CocoCaptions = {}
    res: CocoCaptions = {}
    for clip_id, captions in references.items():
        if isinstance(captions, str) or not isinstance(captions, Sequence):
            raise TypeError(f"references[{clip_id!r}] must be a list of captions, got {type(captions).__name__}")
        if not captions:
            raise ValueError(f"references[{clip_id!r}] is empty; every scored clip needs at least one reference")
        gts[clip_id] = [{"caption": _one_line(text, f"references[{clip_id!r}]")} for text in captions]
        res[clip_id] = [{"caption": _one_line(predictions[clip_id], f"predictions[{clip_id!r}]")}]
    return gts, res


def score_captions(
    references: Mapping[str, Sequence[str]], predictions: Mapping[str, str], spice: bool = False
) -> dict[str, float]:
    """Corpus-level COCO metrics: keys "BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr" (+ "SPICE" when asked).

    Every clip in `references` needs a prediction and vice versa; empty predictions are scored as empty.
    """
    gts, res = to_coco_format(references, predictions)
    _require_java()
    if spice:
        require_spice_jars()
    gts_tokens, res_tokens = tokenize(gts), tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts_tokens, res_tokens, verbose=0)
    metrics = {f"BLEU-{n}": float(value) for n, value in enumerate(bleu, start=1)}
    metrics["METEOR"] = meteor_score(gts_tokens, res_tokens)
    metrics["ROUGE-L"] = float(Rouge().compute_score(gts_tokens, res_tokens)[0])
    metrics["CIDEr"] = float(Cider().compute_score(gts_tokens, res_tokens)[0])
    if spice:
        metrics["SPICE"] = spice_score(gts_tokens, res_tokens)
    return metrics


def tokenize(captions: CocoCaptions) -> Tokenized:
    """PTB-tokenise, lower-case and strip punctuation (pycocoevalcap's PTBTokenizer, one Java run)."""
    try:
        tokenized = PTBTokenizer().tokenize(captions)
    except PermissionError as error:
        raise RuntimeError(
            f"pycocoevalcap's PTBTokenizer writes a temporary file into its own folder {PACKAGE_DIR / 'tokenizer'}, "
            "which is not writable by this user; install pycocoevalcap where it can write (e.g. a virtual environment)"
        ) from error
    lost = [clip_id for clip_id, texts in captions.items() if len(tokenized.get(clip_id, ())) != len(texts)]
    if lost:
        raise RuntimeError(f"the PTB tokenizer returned a different number of captions for {_few(lost)}")
    return tokenized


def meteor_score(gts: Tokenized, res: Tokenized) -> float:
    """METEOR from pycocoevalcap's Java process, which is stopped afterwards whatever happens."""
    scorer = Meteor()
    process = scorer.meteor_p
    try:
        score, _ = scorer.compute_score(gts, res)
    except (ValueError, BrokenPipeError) as error:
        if process.poll() is None:
            raise
        stderr = process.stderr.read().decode(errors="replace").strip()
        raise RuntimeError(f"METEOR's Java process exited with code {process.returncode}: {stderr}") from error
    finally:
        if scorer.lock.locked():  # compute_score leaves it held when it fails; Meteor.__del__ would then block
            scorer.lock.release()
        with contextlib.suppress(BrokenPipeError):  # closing flushes, which fails if Java already exited
            process.stdin.close()
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()
    return float(score)


def spice_score(gts: Tokenized, res: Tokenized) -> float:
    """SPICE (Java, needs Stanford CoreNLP 3.6.0 jars; see `require_spice_jars`)."""
    from pycocoevalcap.spice.spice import Spice

    try:
        score, _ = Spice().compute_score(gts, res)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"SPICE's Java scorer failed with exit code {error.returncode} (it asks for an 8 GB Java heap); "
            "the other metrics do not need SPICE: score with spice=False"
        ) from error
    return float(score)


def _check_same_ids(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> None:
    if not references and not predictions:
        raise ValueError("no captions to score: references and predictions are both empty")
    unreferenced = [clip_id for clip_id in predictions if clip_id not in references]
    if unreferenced:
        raise ValueError(f"{len(unreferenced)} prediction(s) have no references, e.g. {_few(unreferenced)}")
    unpredicted = [clip_id for clip_id in references if clip_id not in predictions]
    if unpredicted:
        raise ValueError(f"{len(unpredicted)} clip(s) with references have no prediction, e.g. {_few(unpredicted)}")


def _one_line(text: object, where: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{where} must hold strings, got {type(text).__name__}: {text!r}")
    return " ".join(text.splitlines())


def _few(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(clip_id) for clip_id in ids[:SHOWN_IDS])
    return shown + (", ..." if len(ids) > SHOWN_IDS else "")


class ScorerMissing(UserError, RuntimeError):
    """A part of the COCO caption scorer that this machine lacks (Java, SPICE's jars); the message says how to get
    it."""


def _require_java() -> None:
    if shutil.which("java") is None:
        raise ScorerMissing(
            "the COCO caption scorer (pycocoevalcap) needs Java on PATH for its tokenizer and METEOR; "
            "install a Java runtime (e.g. apt-get install default-jre-headless)"
        )


def require_spice_jars() -> None:
    """SPICE needs CoreNLP jars that pycocoevalcap would download from the internet on first use; we never do."""
    missing = [name for name in SPICE_CORENLP_JARS if not (SPICE_DIR / "lib" / name).is_file()]
    if missing:
        raise ScorerMissing(
            f"SPICE needs the Stanford CoreNLP 3.6.0 jars in {SPICE_DIR / 'lib'} (missing: {', '.join(missing)}). "
            "Fetch them once with network access: python -c 'from pycocoevalcap.spice.get_stanford_models import "
            "get_stanford_models; get_stanford_models()'. BLEU, METEOR, ROUGE-L and CIDEr do not need them: "
            "score without SPICE (eval.spice=false)."
        )
