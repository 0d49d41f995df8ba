"""The per-stage commands, as a user chains them on one config with their defaults: they write exactly where the
pipeline writes (so `medsae reproduce` afterwards finds every stage up to date), and a stage refuses upstream results
that another config made, naming the fields that differ."""
import json

from conftest import run_cli, tiny_args
from medsae.layout import RunLayout
from medsae.stages import COMMANDS, STAGES


def test_stage_commands_chain_and_meet_the_pipeline(tmp_path):
    args = [*tiny_args(tmp_path), "--figures", tmp_path / "figures"]
    r = run_cli("name", *args, check=False)               # nothing done yet: one line that says what to run first
    assert r.returncode == 2 and "run `medsae phantom`" in r.stderr and r.stderr.count("\n") == 1
    for stage in COMMANDS:
        out = run_cli(stage, *args).stdout
        assert f"[{stage}] results in" in out, out
    run = RunLayout(tmp_path / "default")
    for st in STAGES: assert (run.stage(st.name) / "provenance.json").exists(), st.name
    again = run_cli("reproduce", *args).stdout             # the pipeline finds what the commands made
    for st in STAGES: assert f"[{st.name}] up to date" in again, st.name
    # another SAE config: the commands downstream of the SAE refuse the old results and name the field
    r = run_cli("evaluate", *args, "--set", "sae.expansion=1", check=False)
    assert r.returncode == 2 and "sae.expansion: 2 there, 1 here" in r.stderr and "medsae sae" in r.stderr
    r = run_cli("name", *args, "--set", "sae.l1=3.0", check=False)
    assert r.returncode == 2 and "sae.l1" in r.stderr
    # rerunning the SAE with the new config makes evaluate stale through its input, not its own config
    run_cli("sae", *args, "--set", "sae.expansion=1", "--no-sweep")
    assert json.loads((run.sae / "provenance.json").read_text())["record"]["sae"]["m"] == 512
    r = run_cli("name", *args, "--set", "sae.expansion=1", "--set", "sae.sweep=false", check=False)
    assert r.returncode == 2 and "input sae was remade since" in r.stderr and "medsae evaluate" in r.stderr
    out = run_cli("evaluate", *args, "--set", "sae.expansion=1", "--set", "sae.sweep=false").stdout
    assert "[evaluate] results in" in out and "[activations]" in out
