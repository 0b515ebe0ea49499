"""The config's `stop` in the project's own loop (grokking/runs/stopping.py): validation early
stopping on synthetic curves, the candidates kept on disk until no resume point needs them, and
tiny runs of each family with `stop=lar` (and language models with `stop=validation`) that stop,
write the chosen weights and their summary fields, and resume after a kill -9 at any evaluation
to exactly the uninterrupted run's result; a grokking pack whose members stop on their own."""

import functools
import math

import pytest
import torch
from conftest import copies_after_each_evaluation, tiny_config, tiny_lm
from test_training import same_metrics

from grokking.algorithmic import train, train_pack
from grokking.algorithmic.record import Events, stop_reason
from grokking.lar.select import Decision, OverfittingStop
from grokking.lm import record as lm_record
from grokking.runs.config import ConfigError, validate_run
from grokking.runs.record import RunRecord
from grokking.runs.rundir import COMPLETED, RunDir
from grokking.runs.stopping import Selection, StopKind, ValidationStop


def feed(rule: ValidationStop, losses: list[float]) -> list[Decision]:
    """The rule's decisions for losses at evaluations 0, 10, 20, ..., until it stops."""
    decisions = []
    for i, loss in enumerate(losses):
        decisions.append(rule.update(10 * i, loss))
        if decisions[-1].stop:
            break
    return decisions


def test_validation_stop_keeps_the_best_after_patience_evaluations_without_a_better_one():
    rule = ValidationStop(patience=3)
    decisions = feed(rule, [5.0, 4.0, 3.0, 3.5, 3.0, 3.2, 2.0])
    assert (rule.stopped_at, rule.selected) == (50, 20)  # 3.0 again is no improvement
    assert [d.save for d in decisions] == [True, True, True, False, False, False]
    assert [d.drop for d in decisions] == [(), (0,), (10,), (), (), ()]
    assert decisions[-1].stop and rule.candidates == [20]
    assert "not improved on 3.0000 (step 20) for 3 evaluations; kept step 20" in rule.reason


def test_validation_stop_restarts_its_patience_at_each_better_loss_and_skips_nan():
    rule = ValidationStop(patience=2)
    feed(rule, [math.nan, 4.0, 4.5, 3.0, 3.1, math.nan])
    assert (rule.stopped_at, rule.selected) == (50, 30)


def test_at_the_budget_validation_keeps_its_best_and_the_lar_rule_its_last():
    validation = ValidationStop()
    feed(validation, [5.0, 4.0, 4.1])
    validation.end(20, "reached the budget")
    assert (validation.stopped_at, validation.selected) == (20, 10)
    assert validation.reason.endswith("kept the best, step 10")
    lar = OverfittingStop(every=10)
    for step in range(21):
        lar.update(step, 0.5)
    assert lar.candidates == [10, 20]  # 0 dropped once out of reach
    decision = lar.end(20, "reached the budget")
    assert decision.stop and (lar.stopped_at, lar.selected) == (20, 20)
    assert decision.drop == (10,) and lar.candidates == [20]
    assert lar.reason == "reached the budget before the rule stopped; kept the last step 20"


def test_a_dropped_candidate_stays_on_disk_until_a_resume_point_no_longer_holds_it(tmp_path):
    run = RunDir(tmp_path)
    selection = Selection(StopKind.validation, ValidationStop(), run, "step")
    weights = {"w": torch.ones(2)}
    for step, loss in ((0, 2.0), (10, 1.0)):
        selection.apply(selection.rule.update(step, loss), step, step, lambda: weights)
    assert run.checkpoint_names("candidate_") == ["candidate_step_0", "candidate_step_10"]
    selection.after_resume_point()  # last.pt now holds the rule with one candidate, step 10
    assert run.checkpoint_names("candidate_") == ["candidate_step_10"]
    selection.end(20, "reached the budget")
    selection.write_selected(20, 20, {"w": torch.zeros(2)})
    selected = run.load_checkpoint("selected")
    assert selected["step"] == 10 and torch.equal(selected["model"]["w"], weights["w"])
    selection.after_completion()
    assert run.checkpoint_names("candidate_") == []


def test_the_grokking_stop_factor_applies_to_stop_validation_only():
    grokked = Events(memorization_epoch=20, grokking_epoch=100)
    for kind in (StopKind.lar, StopKind.none):
        cfg = tiny_config(max_epochs=1000, stop=kind)
        assert stop_reason(300, grokked, cfg) is None
        assert stop_reason(1000, grokked, cfg) == "reached max_epochs"


def test_a_stop_that_is_not_a_kind_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"^stop: must be one of validation, lar, none, got 'x'"):
        validate_run(tiny_config(stop="x"))


@pytest.mark.parametrize("family", ["algorithmic", "lm"])
def test_the_command_refuses_an_unknown_stop_in_one_line(refusal, family):
    code, stderr = refusal("stop=early", family=family)
    message = "error: stop: must be one of validation, lar, none, got 'early'\n"
    assert code == 2 and stderr == message


# --- through the loop ----------------------------------------------------------------------------


def same_ending(run: RunDir, whole: RunDir, unit: str) -> None:
    """The same metrics, summary stop fields and selected weights as the uninterrupted run."""
    same_metrics(run, whole)
    summary, expected = run.read_summary(), whole.read_summary()
    assert summary["stop"] == expected["stop"] and summary["stop_reason"] == expected["stop_reason"]
    selected, kept = run.load_checkpoint("selected"), whole.load_checkpoint("selected")
    assert selected[unit] == kept[unit] == expected["stop"][f"selected_{unit}"]
    assert all(torch.equal(selected["model"][k], kept["model"][k]) for k in kept["model"])
    assert run.checkpoint_names("candidate_") == []  # selected.pt holds the one kept


def candidates_of_last(run: RunDir, unit: str) -> list[str]:
    """The candidates the rule in a resume point may still select, as checkpoint names."""
    return [f"candidate_{unit}_{c}" for c in run.load_checkpoint("last")["stop_rule"]["candidates"]]


def test_a_grokking_pack_stopped_by_lar_resumes_identically_after_a_kill_9_at_any_evaluation(
    tmp_path, monkeypatch
):
    """A pack of two whose members' generalization alarms fire at different epochs (armed from
    a low training accuracy, so tiny runs reach them): each stops on its own, 10 % after its
    alarm, at an epoch that is no multiple of eval_every; validation is still recorded."""
    cfgs = [
        tiny_config(max_epochs=40, stop=StopKind.lar, memorization_threshold=0.1, seed=seed)
        for seed in (0, 1)
    ]
    whole = [RunDir(tmp_path / "whole" / str(i)) for i in range(2)]
    with copies_after_each_evaluation(monkeypatch, tmp_path / "whole") as killed:
        summaries = train_pack([(cfg, run.path) for cfg, run in zip(cfgs, whole, strict=True)])
    stops = [summary["stop"] for summary in summaries]
    assert stops[0]["stopped_epoch"] != stops[1]["stopped_epoch"]
    for summary, stop in zip(summaries, stops, strict=True):
        assert stop["kind"] == "lar" and stop["stopped_epoch"] == summary["final_epoch"] < 40
        assert stop["selected_epoch"] == stop["stopped_epoch"]  # the last weights
        assert stop["reason"].startswith("generalization alarm at epoch ")
        assert summary["stop_reason"] == stop["reason"]
    for run in whole:
        metrics = run.read_metrics()
        assert metrics["val_acc"].notna().all()
        assert metrics["epoch"].iloc[-1] % cfgs[0].eval_every != 0
        assert torch.equal(
            run.load_checkpoint("selected")["model"]["unembed.weight"],
            run.load_checkpoint("final")["model"]["unembed.weight"],
        )
    for folder in killed:
        train_pack([(cfg, folder / str(i)) for i, cfg in enumerate(cfgs)])
        for i in range(2):
            same_ending(RunDir(folder / str(i)), whole[i], "epoch")


def test_stop_none_trains_a_grokking_run_to_max_epochs_and_says_so(tmp_path):
    summary = train(tiny_config(max_epochs=10, stop=StopKind.none), tmp_path)
    assert summary["stop"] == {
        "kind": "none", "stopped_epoch": 10, "selected_epoch": 10, "reason": "reached max_epochs",
    }  # fmt: skip
    assert not RunDir(tmp_path).has_checkpoint("selected")


def test_a_run_killed_as_it_completes_resumes_to_the_same_stop(tmp_path, monkeypatch):
    """Killed after its last resume point (the rule settled at the budget) but before its
    summary says completed: the resumed run ends as the uninterrupted one did."""
    cfg = tiny_config(max_epochs=10, stop=StopKind.lar)
    whole = train(cfg, tmp_path / "whole")
    write_summary = RunRecord.write_summary

    def killed_at_completion(self, status, **extra):
        if status == COMPLETED:
            raise SystemExit(137)
        return write_summary(self, status, **extra)

    with monkeypatch.context() as patch:
        patch.setattr(RunRecord, "write_summary", killed_at_completion)
        with pytest.raises(SystemExit):
            train(cfg, tmp_path / "killed")
    resumed = train(cfg, tmp_path / "killed")
    assert resumed["stop_reason"] == whole["stop_reason"] == "reached max_epochs"
    assert resumed["stop"] == whole["stop"]


@pytest.mark.parametrize("stop", ["lar", "validation"])
def test_a_language_model_stopped_early_resumes_identically_after_a_kill_9_at_any_evaluation(
    tmp_path, monkeypatch, corpus_dir, stop
):
    """A tiny model on 300 training tokens overfits within 50 steps: validation early stopping
    keeps step 20; the LAR rule (its alarm's window shortened to 5 steps, for a 60-step run)
    stops between two evaluations and keeps an earlier candidate. Every copy's resume point
    finds the candidates its rule may select on disk."""
    from grokking.lm import load_config
    from grokking.lm import train as train_lm

    monkeypatch.setattr(lm_record, "OverfittingStop", functools.partial(OverfittingStop, window=5))
    overrides = ["data.train_tokens=300", "optim.lr=3e-2", f"stop={stop}", "device=cpu"]
    cfg = load_config([*tiny_lm(corpus_dir, tmp_path / "cache"), *overrides])
    with copies_after_each_evaluation(monkeypatch, tmp_path / "whole") as killed:
        summary = train_lm(cfg, tmp_path / "whole")
    whole = RunDir(tmp_path / "whole")
    stop_fields = summary["stop"]
    assert stop_fields["kind"] == stop and summary["stop_reason"] == stop_fields["reason"]
    assert stop_fields["stopped_step"] == summary["final_step"] < cfg.max_steps
    assert stop_fields["selected_step"] < stop_fields["stopped_step"]
    if stop == "validation":
        assert stop_fields["selected_step"] == summary["min_val_loss_step"]
    else:
        assert summary["final_step"] % cfg.eval_every != 0  # stopped between two evaluations
    final, selected = whole.load_checkpoint("final"), whole.load_checkpoint("selected")
    assert not torch.equal(final["model"]["lm_head.weight"], selected["model"]["lm_head.weight"])
    for folder in killed:
        run = RunDir(folder)
        if run.status() != "completed":
            assert all(run.has_checkpoint(name) for name in candidates_of_last(run, "step"))
        train_lm(cfg, folder)
        same_ending(run, whole, "step")
