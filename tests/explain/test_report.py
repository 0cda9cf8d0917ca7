"""`cli.py report`: a one-page PDF of one scan from a tiny fine-tuned run, and every refusal in one line."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from cli_json import invoke as _invoke
from PIL import Image

pypdf = pytest.importorskip("pypdf")  # a dev dependency: the PDF's text is read back with it
TINY = ["--model", "test_resnet", "--image-size", "64", "--no-progress"]
DISCLAIMER = "Research tool, not a medical device: not for diagnosis."


@pytest.fixture(scope="module")
def tiny_run(synth_tumor: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A test_resnet fine-tuned from scratch for 2 steps, and one of its stored test scans."""
    from sslmri_core.store.queries import predictions_frame

    base = tmp_path_factory.mktemp("report")
    db, out = f"sqlite:///{base / 'runs.db'}", str(base / "runs")
    code, ft, err = _invoke(["finetune", "--min-steps", "2", "--data", str(synth_tumor), "--init", "scratch", *TINY,
                             "--epochs", "1", "--batch-size", "8", "--db", db, "--out", out, "--json"])
    assert code == 0, err
    test = predictions_frame(db, ft["run_id"], "test")
    return {"db": db, "run": str(ft["run_id"]), "scan": str(test["scan"].iloc[0]), "base": str(base),
            "data": str(synth_tumor)}


def _report(run: dict[str, str], out: Path, *args: str) -> tuple[int, dict | None, str]:
    return _invoke(["report", "--run", run["run"], "--scan", run["scan"], "--out", str(out), *args,
                    "--db", run["db"], "--json"])


def _text(pdf: bytes) -> tuple[int, str, dict]:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    text = " ".join(" ".join(p.extract_text() for p in reader.pages).split())  # wrapped lines and spaces as one space
    return len(reader.pages), text, dict(reader.metadata or {})


def test_report_of_a_stored_scan(tiny_run: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "report.pdf"
    code, js, err = _report(tiny_run, out, "--window", "10,240")
    assert code == 0, err
    pdf = out.read_bytes()
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1  # one page (/Pages does not match)
    pages, text, meta = _text(pdf)
    assert pages == 1
    assert f"Run: {tiny_run['run']} (finetune" in text
    assert js["pred_label"] in text and DISCLAIMER in text
    assert js["patient_decision"] is not None and "Patient-level decision" in text
    assert f"{js['patient_decision']} (mean probability" in text
    assert "window 10-240" in text
    rel = str(Path(tiny_run["scan"]).relative_to(tiny_run["data"]))
    assert rel in text and tiny_run["data"] + "/" + rel not in text  # the key inside the data folder, not the path
    assert js["cam_source"] == "computed" and "In-head energy" in text
    # metadata: a title and the creator, never a path, a host or a date
    import socket

    assert meta.get("/Title") == "sslmri scan report" and meta.get("/Creator") == "sslmri"
    values = " ".join(str(v) for v in meta.values())
    assert "/" not in values.replace("Matplotlib pdf backend", "") and socket.gethostname() not in values
    assert "/CreationDate" not in meta


def test_report_of_an_image_outside_the_data(tiny_run: dict[str, str], tmp_path: Path) -> None:
    """Any image file: prediction and map, no patient-level decision, and its file name is never shown."""
    scan = tmp_path / "Doe_Jane_1970-01-01.png"
    Image.open(tiny_run["scan"]).save(scan)
    out = tmp_path / "other.pdf"
    code, js, err = _invoke(["report", "--run", tiny_run["run"], "--scan", str(scan), "--out", str(out),
                             "--db", tiny_run["db"], "--json"])
    assert code == 0, err
    _, text, _ = _text(out.read_bytes())
    assert js["patient_decision"] is None
    assert "no patient-level decision: this scan is not in the run's data" in text
    assert "Doe" not in text and "Doe" not in js["scan"]


def test_stored_statistics_are_shown_with_their_references(tiny_run: dict[str, str], tmp_path: Path) -> None:
    """After a gradcam run over the scan, the page shows its stored faithfulness checks beside their references."""
    code, cam, err = _invoke(["gradcam", "--run", tiny_run["run"], "--limit", "40", "--road-percentiles", "",
                              "--no-progress", "--db", tiny_run["db"], "--out", str(Path(tiny_run["base"]) / "runs"),
                              "--json"])
    assert code == 0, err
    out = tmp_path / "stored.pdf"
    code, js, err = _report(tiny_run, out)
    assert code == 0, err
    _, text, _ = _text(out.read_bytes())
    assert js["cam_source"] == "stored" and f"Stored by gradcam run {cam['run_id']}" in text
    assert "Deletion drop" in text and "random region in the head" in text


def test_the_page_renders_from_content_alone() -> None:
    """What the dashboard calls: render_report with content it already holds (no store, no torch)."""
    from sslmri_core.explain.report import ReportContent, StatLine, render_report

    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    content = ReportContent(image=image, cam=np.random.default_rng(0).random((8, 8)), pred_label="glioma",
                            confidence=0.9, probs={"glioma": 0.9, "none": 0.1}, decision=None,
                            decision_note="no patient-level decision: this scan is not in the run's data",
                            model={"Run": "7 (finetune, finished)"}, cam_source="Computed now.",
                            cam_stats=[StatLine("In-head energy", "80.0%", "head area 60.0%", "share inside")],
                            scan_label="glioma/a.png")
    first, second = render_report(content), render_report(content)
    assert first == second  # reproducible: no creation date
    pages, text, _ = _text(first)
    assert pages == 1 and "glioma (90.0%)" in text and "head area 60.0%" in text


def test_a_nifti_slice_key_reads_that_slice(tmp_path: Path) -> None:
    """``path#z=k`` names one axial slice of a volume, decoded as the data layer decodes it."""
    import nibabel as nib

    from sslmri_core.data.decode import nifti_slices
    from sslmri_core.errors import UsageError
    from sslmri_core.explain.report import read_scan

    vol = np.zeros((24, 24, 6), np.float32)
    vol[4:20, 4:20, 1:5] = np.arange(1, 5, dtype=np.float32) * 100.0
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    planes = dict(nifti_slices(path, 32)[0])
    assert np.array_equal(read_scan(f"{path}#z=2", 32), planes[2])
    with pytest.raises(UsageError, match="--scan: no usable axial slice 5"):
        read_scan(f"{path}#z=5", 32)


def test_an_existing_file_is_refused_and_left_unchanged(tiny_run: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "mine.pdf"
    out.write_bytes(b"the user's own file")
    code, _, err = _report(tiny_run, out)
    assert code == 2 and "already exists" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pdf"]  # no temporary file left behind


@pytest.mark.parametrize(("change", "message"), [
    (["--scan", "/nonexistent/scan.png"], "no such file"),
    (["--run", "99999999999999999999"], "--run"),
    (["--window", "200,100"], "--window"),
    (["--window", "a,b"], "--window"),
    (["--overlay", "opacity=2"], "--overlay opacity"),
    (["--overlay", "colormap=nope"], "colormap"),
    (["--method", "nope"], "--method"),
    (["--out", "/nonexistent-folder/r.pdf"], "does not exist"),
    (["--out", "report.txt"], ".pdf"),
])
def test_bad_options_are_one_line_exit_2(tiny_run: dict[str, str], tmp_path: Path, change: list[str],
                                         message: str) -> None:
    args = {"--run": tiny_run["run"], "--scan": tiny_run["scan"], "--out": str(tmp_path / "r.pdf")}
    extra = []
    if change[0] in args:
        args[change[0]] = change[1]
    else:
        extra = change
    code, _, err = _invoke(["report", *[x for kv in args.items() for x in kv], *extra, "--db", tiny_run["db"]])
    assert code == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.pdf").exists()


def test_a_run_that_is_not_a_finetune_is_refused(tiny_run: dict[str, str], tmp_path: Path) -> None:
    from sslmri_core.store.writer import RunStore

    store = RunStore(tiny_run["db"])
    other = store.start_run("gradcam", {}, parent_run_id=int(tiny_run["run"]))
    store.end_run(other)
    for run, message in ((str(other), "is a gradcam run"), ("999999", "no such run")):
        code, _, err = _invoke(["report", "--run", run, "--scan", tiny_run["scan"], "--out", str(tmp_path / "r.pdf"),
                                "--db", tiny_run["db"]])
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_an_image_without_a_subject_id_is_its_own_patient(synth_tumor: Path, tmp_path: Path) -> None:
    """As the subject metrics count it: the decision is the image's own, never a vote of unrelated images."""
    import shutil

    data = tmp_path / "nosubjects"
    for c, folder in enumerate(sorted(p for p in synth_tumor.iterdir() if p.is_dir())[:2]):
        (data / folder.name).mkdir(parents=True)
        for i, png in enumerate(sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_mask"))[:12]):
            shutil.copy(png, data / folder.name / f"img{c}{i:02d}.png")  # no subject pattern in the name
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, ft, err = _invoke(["finetune", "--min-steps", "2", "--data", str(data), "--init", "scratch", *TINY,
                             "--epochs", "1", "--batch-size", "8", "--db", db, "--out", str(tmp_path / "runs"),
                             "--json"])
    assert code == 0, err
    from sslmri_core.store.queries import predictions_frame

    test = predictions_frame(db, ft["run_id"], "test")
    assert test["subject"].isna().all() and len(test) > 1
    run = {"run": str(ft["run_id"]), "scan": str(test["scan"].iloc[0]), "db": db}
    code, js, err = _report(run, tmp_path / "r.pdf")
    assert code == 0, err
    _, text, _ = _text((tmp_path / "r.pdf").read_bytes())
    assert js["patient_decision"] == js["pred_label"] and "no subject id: it is its own patient" in text
