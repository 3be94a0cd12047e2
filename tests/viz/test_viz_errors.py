"""Bad input to the figure commands: one clear line on stderr, exit 2, no traceback, nothing overwritten."""

from __future__ import annotations

import pytest


def one_error_line(result, message):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_missing_non_image_and_truncated_files(run_cli, b0_checkpoint, photos, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photos["grace_hopper"].read_bytes()[:5000])
    for path, message in (
        (tmp_path / "missing.png", "does not exist"),
        (text, "is not an image file"),
        (truncated, "corrupt or truncated"),
    ):
        out = tmp_path / "fig.png"
        result = run_cli("visualize-clusters", path, photos["chelsea"], "--checkpoint", b0_checkpoint, "-o", out)
        one_error_line(result, message)
        assert not out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--blocks", "3"], "block 3 is not a DCC block of this model; the DCC blocks are 7-13"),
        (["--blocks", "7,x"], "is not a block number"),
        (["--center", "4,0"], "--center 4,0 is outside block 7's 4x4 grid"),
        (["--center", "2,2"], "--center 2,2 is outside block 12's 2x2 grid"),
        (["--center", "1"], "is not ROW,COL"),
        (["--centers", "some"], "is not a mode"),
        (["--centers", "all", "--center", "1,1"], "not both"),
        (["--variant", "b2"], "does not match"),
        (["-o", "fig.gif"], "use .png, .svg or .pdf"),
    ],
)
def test_bad_options(run_cli, b0_checkpoint, photos, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    one_error_line(run_cli("visualize-clusters", photos["coffee"], "--checkpoint", b0_checkpoint, *args), message)


def test_existing_output_is_kept(run_cli, b0_checkpoint, photos, tmp_path):
    out = tmp_path / "fig.png"
    out.write_bytes(b"mine")
    one_error_line(run_cli("visualize-clusters", photos["coffee"], "--checkpoint", b0_checkpoint, "-o", out),
                   "--overwrite")
    one_error_line(run_cli("kernel-weights", "--checkpoint", b0_checkpoint, "-o", out), "--overwrite")
    assert out.read_bytes() == b"mine"
    result = run_cli("kernel-weights", "--checkpoint", b0_checkpoint, "-o", out, "--overwrite")
    assert result.exit_code == 0 and out.read_bytes().startswith(b"\x89PNG")


def test_kernel_weights_bad_input(run_cli, b0_checkpoint, tmp_path):
    one_error_line(run_cli("kernel-weights", "--checkpoint", b0_checkpoint, "--blocks", "14"), "7-13")
    one_error_line(run_cli("kernel-weights", "--checkpoint", b0_checkpoint, "--json", "--csv"), "one of")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 20)
    one_error_line(run_cli("kernel-weights", "--checkpoint", broken), "broken.safetensors")
