"""Screenshot of `sheetrunner top` for the README, taken from a real terminal (tmux).

    python scripts/render_top.py docs/images/top.png

Fills a throwaway state directory with a made-up pool and runs through the Store
API (no daemon, no hosts), starts `python -m sheetrunner.top` in a detached tmux
pane, captures the pane with its colours (`tmux capture-pane -e -p`) and draws
it with Pillow in DejaVu Sans Mono. Needs tmux, Pillow and fonts-dejavu-core;
none is a dependency of sheetrunner.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from rich.style import Style
from rich.terminal_theme import MONOKAI
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sheetrunner.model import Accelerator, HostObservation, Run, Status  # noqa: E402
from sheetrunner.store import Store  # noqa: E402

COLUMNS, LINES = 120, 28
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_SIZE = 15
THEME = MONOKAI

CONFIG = """\
[sheet]
path = "experiments.xlsx"
curve = "acc"

[daemon]
poll_interval = 15
state_dir = "state"

[jobs.resnet]
command = ["{python}", "train.py"]
[jobs.digits]
command = ["{python}", "jobs/digits.py"]
[jobs.lottery]
command = ["{python}", "jobs/lottery.py"]

[[hosts]]
name = "a100-1"
address = "10.0.0.11"
accelerators = 4

[[hosts]]
name = "4090-2"
address = "10.0.0.12"
accelerators = 2
drain = true

[[hosts]]
name = "v100-3"
address = "10.0.0.13"
accelerators = 2

[[hosts]]
name = "local"
local = true
slots = 2
"""


def curve(rng: random.Random, n: int, top: float, speed: float) -> list[float]:
    return [round(top * (1 - math.exp(-speed * (i + 1))) + rng.uniform(-0.01, 0.01), 4)
            for i in range(n)]


def demo_state(state_dir: Path) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC).replace(microsecond=0)

    def run(run_id, row, job, status, host=None, accs=(), gpus=1, minutes=0, points=0, top=0.9,
            speed=0.1, message="", lr="0.01"):
        started = now - timedelta(minutes=minutes, seconds=rng.randint(0, 59))
        acc = curve(rng, points, top, speed) if points else []
        final = status.is_final
        metrics = {"step": points * 100, "acc": acc[-1], "loss": round(2.3 * (1 - acc[-1]), 4)} \
            if acc else {}
        return Run(run_id, run_id[:8], job, (("lr", lr),), gpus, None, status, started, now,
                   attempt=1 if host else 0, host=host, accelerators=tuple(accs),
                   started_at=started if host else None,
                   attempt_started_at=started if host else None,
                   finished_at=now - timedelta(minutes=2) if final and host else None,
                   row=row, message=message, metrics=metrics,
                   summary={"history": {"acc": acc}} if acc else {})

    runs = [
        run("3f9a21c0-k7m2qx", 2, "resnet", Status.RUNNING, "a100-1", ("0", "1"), 2, 184, 48,
            0.93, 0.05, lr="0.1"),
        run("3f9a21c0-p3n8zr", 3, "resnet", Status.RUNNING, "a100-1", ("2",), 1, 95, 30, 0.9,
            0.06, lr="0.03"),
        run("3f9a21c0-w2e4r6", 4, "resnet", Status.SUCCEEDED, "a100-1", ("3",), 1, 310, 60, 0.91,
            0.07, lr="0.01"),
        run("8b1c44de-q9w8e7", 5, "digits", Status.RUNNING, "4090-2", ("0",), 1, 12, 22, 0.97,
            0.2),
        run("8b1c44de-z5x6c7", 6, "digits", Status.LOST, "v100-3", ("1",), 1, 40, 18, 0.95, 0.2,
            message="v100-3 cannot be reached since 14:02; waiting for it"),
        run("8b1c44de-m1n2b3", 7, "digits", Status.RETRYING, "4090-2", ("1",), 1, 6, 5, 0.6, 0.3,
            message="attempt 1 crashed (exit 137); restarts in 1m"),
        run("c70de5a1-aa11bb", 8, "lottery", Status.RUNNING, "local", (), 0, 3, 14, 0.88, 0.25),
        run("c70de5a1-cc22dd", 9, "lottery", Status.FAILED, "local", (), 0, 9, 3, 0.4, 0.5,
            message="ValueError: --prune-fraction must be below 1 (got 1.5)"),
        run("c70de5a1-ee33ff", 10, "lottery", Status.QUEUED, gpus=0,
            message="waiting for a free slot"),
        run("5d2e8f90-gg44hh", 11, "resnet", Status.QUEUED, gpus=4,
            message="waiting for 4 free accelerators on one host"),
        run("5d2e8f90-jj55kk", 12, "resnet", Status.HELD, gpus=2, message="action: hold"),
    ]
    probed = now - timedelta(seconds=4)
    a100 = "NVIDIA A100-SXM4-80GB"
    hosts = [
        HostObservation("a100-1", True, probed, load=11.2, disk_free_bytes=812 * 2**30,
                        accelerators=(Accelerator("0", a100, 71_200, 81_920, 98),
                                      Accelerator("1", a100, 70_950, 81_920, 97),
                                      Accelerator("2", a100, 38_400, 81_920, 64),
                                      Accelerator("3", a100, 5, 81_920, 0))),
        HostObservation("4090-2", True, probed, load=3.1, disk_free_bytes=95 * 2**30,
                        accelerators=(Accelerator("0", "NVIDIA GeForce RTX 4090", 9_800, 24_564, 71),
                                      Accelerator("1", "NVIDIA GeForce RTX 4090", 21_000, 24_564, 88,
                                                  foreign=True))),
        HostObservation("v100-3", False, probed, error="timed out",
                        down_since=now - timedelta(minutes=23)),
        HostObservation("local", True, probed, load=1.4, disk_free_bytes=41 * 2**30),
    ]
    store = Store(state_dir / "state.sqlite")
    store.save_runs(runs)
    store.save_hosts(hosts)
    store.close()


def capture(config: Path) -> list[str]:
    session = f"sheetrunner-top-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    command = f"{sys.executable} -m sheetrunner.top -c {config}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(COLUMNS),
                    "-y", str(LINES), command], check=True, env=env)
    try:
        for _ in range(40):
            time.sleep(0.5)
            screen = subprocess.run(["tmux", "capture-pane", "-e", "-p", "-t", session],
                                    capture_output=True, text=True, check=True).stdout
            if "5d2e8f90-jj55kk" in screen:
                time.sleep(1)
                return subprocess.run(["tmux", "capture-pane", "-e", "-p", "-t", session],
                                      capture_output=True, text=True, check=True).stdout.splitlines()
        raise SystemExit("top did not draw within 20 s:\n" + screen)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def draw(lines: list[str], target: Path) -> None:
    fonts = {bold: ImageFont.truetype(str(FONT_DIR / name), FONT_SIZE)
             for bold, name in ((False, "DejaVuSansMono.ttf"), (True, "DejaVuSansMono-Bold.ttf"))}
    left, top, right, bottom = fonts[False].getbbox("█")
    cell_w, cell_h = round(fonts[False].getlength("M")), bottom - top + 3
    pad = 14
    background = tuple(THEME.background_color)
    foreground = tuple(THEME.foreground_color)
    image = Image.new("RGB", (COLUMNS * cell_w + 2 * pad, LINES * cell_h + 2 * pad), background)
    pen = ImageDraw.Draw(image)
    # one text for the whole pane: tmux carries a colour over a line break without repeating it
    for y, text in enumerate(Text.from_ansi("\n".join(lines)).split("\n", allow_blank=True)[:LINES]):
        x = 0
        for offset, char in enumerate(text.plain):
            style = _style_at(text, offset)
            fg = tuple(style.color.get_truecolor(THEME)) if style.color else foreground
            bg = tuple(style.bgcolor.get_truecolor(THEME, foreground=False)) if style.bgcolor else background
            if style.reverse:
                fg, bg = bg, fg
            if style.dim:
                fg = tuple((a + b) // 2 for a, b in zip(fg, bg, strict=True))
            px, py = pad + x * cell_w, pad + y * cell_h
            if bg != background:
                pen.rectangle([px, py, px + cell_w - 1, py + cell_h - 1], fill=bg)
            if char in "▁▂▃▄▅▆▇█▏▎▍▌▋▊▉":
                _block(pen, char, px, py, cell_w, cell_h, fg)
            elif char != " ":
                pen.text((px, py - top + 1), char, font=fonts[bool(style.bold)], fill=fg)
            x += 1
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def _block(pen: ImageDraw.ImageDraw, char: str, x: int, y: int, w: int, h: int, fill) -> None:
    """Block elements drawn as rectangles, so meters and sparklines have no gaps."""
    lower = "▁▂▃▄▅▆▇█"
    inner = h - 4  # a gap between lines, as most terminal fonts leave
    if char in lower:
        height = max(1, round(inner * (lower.index(char) + 1) / 8))
        pen.rectangle([x, y + 2 + inner - height, x + w - 1, y + 2 + inner - 1], fill=fill)
    else:
        width = round(w * ("▏▎▍▌▋▊▉".index(char) + 1) / 8)
        pen.rectangle([x, y + 2, x + width - 1, y + 2 + inner - 1], fill=fill)


def _style_at(text: Text, offset: int) -> Style:
    style = Style.parse(str(text.style)) if text.style else Style()
    for span in text.spans:
        if span.start <= offset < span.end:
            style += span.style if isinstance(span.style, Style) else Style.parse(span.style)
    return style


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "images" / "top.png")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "sheetrunner.toml"
        config.write_text(CONFIG)
        demo_state(Path(tmp) / "state")
        lines = capture(config)
    draw(lines, target)
    print(f"wrote {target} ({target.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
