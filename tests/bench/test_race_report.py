"""bench/race_report.py: the race's table and figure from result rows (bench/race.py makes
them from runs on simulated hosts; here they are written by hand)."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("race_report", ROOT / "bench" / "race_report.py")
race_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(race_report)

ARGS = SimpleNamespace(targets=[0.85, 0.88], rates=["50mbit", "unlimited"],
                       rules=["BSP", "GOSSIP"], workers=2, set=["epochs=2"], eval_every=0.25)


def row(rule, rate, to85, to88, final=0.89, slow=False, repeat=0, code=0, busy=None):
    made = {"rule": rule, "rate": rate, "slow": slow, "repeat": repeat, "code": code,
            "final": final, "train_time": 300.0, "wall": 320.0,
            "to": {"0.85": to85, "0.88": to88}}
    if busy is not None:
        made["link_busy"] = busy
    return made


ROWS = [row("BSP", "50mbit", 200, 400, busy=0.8), row("BSP", "unlimited", 100, 200),
        row("BSP", "unlimited", 150, 300, slow=True),
        row("GOSSIP", "50mbit", 100, 205, busy=0.05, repeat=0),
        row("GOSSIP", "50mbit", 110, None, busy=0.07, repeat=1),
        row("GOSSIP", "unlimited", 95, 200), row("GOSSIP", "unlimited", 90, 190, repeat=1),
        row("GOSSIP", "unlimited", 96, 204, slow=True)]


def test_cells_give_medians_ranges_and_runs_that_did_not_get_there():
    assert race_report.spread([100, 110]) == "105 s (100 s to 110 s)"
    assert race_report.spread([205, None]) == "not reached (1 of 2)"
    assert race_report.spread([None]) == "not reached"
    text = race_report.table(ROWS, ARGS, 42.0)
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| BSP | 200 s / 400 s, final 89.00%, link 80% | 100 s / 200 s, final 89.00% | " \
           "150 s / 300 s, final 89.00% (1.50x the even run's to 85%) |" == lines["| BSP"]
    assert "105 s (100 s to 110 s) / not reached (1 of 2)" in lines["| GOSSIP"]
    assert "2 run(s) per cell" in text and "the race took 42 min" in text


def test_a_rate_that_costs_no_time_is_marked_compute_bound():
    rows = [row("BSP", "50mbit", 100, 215), row("BSP", "unlimited", 100, 200),
            row("GOSSIP", "50mbit", 100, 225), row("GOSSIP", "unlimited", 100, 200)]
    cells = {rule: race_report.cell(rows, rule, "50mbit", ARGS.targets)
             for rule in ("BSP", "GOSSIP")}
    assert cells["BSP"].endswith(", compute")          # 215 <= 1.10 x 200
    assert "compute" not in cells["GOSSIP"]             # 225 > 220: the link set the pace


def test_failed_runs_are_named_not_averaged():
    rows = [row("BSP", "50mbit", None, None, code=1), row("BSP", "unlimited", 100, 200)]
    assert race_report.cell(rows, "BSP", "50mbit", ARGS.targets) == "failed (1 of 1)"


def test_the_figure_is_drawn(tmp_path):
    race_report.draw(ROWS, ARGS, tmp_path / "race.png")
    assert (tmp_path / "race.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
