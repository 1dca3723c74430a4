import math

import pytest

from segtrain import overhead, planning
from segtrain.durations import DurationError, parse_duration, parse_percent
from segtrain.plan import main as plan_cli
from segtrain.plan_text import plan_table


def test_dsri_worked_example_gives_336_checkpoints_and_1_11_percent():
    o = overhead.overhead(7 * 86400, 20, 1800)
    assert o.checkpoints == pytest.approx(336)
    assert o.checkpoint_seconds / 3600 == pytest.approx(1.8667, abs=1e-3)
    assert round(o.percent, 2) == 1.11


def test_overhead_does_not_depend_on_training_time():
    assert overhead.overhead(3600, 20, 1800).percent == pytest.approx(overhead.overhead(7 * 86400, 20, 1800).percent)


def test_target_overhead_inverts_the_formula():
    z = overhead.interval_for_overhead(20, 2.0)
    assert z == pytest.approx(1000)
    assert overhead.overhead(86400, 20, z).percent == pytest.approx(2.0)


def test_young_and_daly_intervals():
    assert overhead.young_interval(20, 86400) == pytest.approx(math.sqrt(2 * 20 * 86400))
    daly = overhead.daly_interval(20, 86400)
    assert daly < overhead.young_interval(20, 86400)  # the -C term dominates for small C/M
    assert overhead.daly_interval(100, 10) == 10  # C >= 2M: checkpoint every M


def costs(step=0.1, save=1.0, load=0.5, startup=2.0):
    return planning.Costs(step_seconds=step, save_seconds=save, load_seconds=load, startup_seconds=startup)


def test_every_segment_fits_its_time_limit():
    c = costs()
    plan = planning.make_plan(total_steps=10_000, time_limit=100, costs=c,
                              policy=planning.Policy(every_steps=50), margin_seconds=5)
    assert plan.steps_per_segment % 50 == 0
    for seg in plan.segments:
        assert planning.segment_seconds(seg.end - seg.start, seg.interval, c) + 5 <= 100
    # one more interval would not fit
    assert planning.segment_seconds(plan.steps_per_segment + 50, 50, c) + 5 > 100
    assert plan.segments[-1].end == 10_000
    assert [s.start for s in plan.segments[1:]] == [s.end for s in plan.segments[:-1]]


def test_max_overhead_policy_keeps_overhead_at_or_below_target():
    plan = planning.make_plan(total_steps=100_000, time_limit=3600, costs=costs(step=0.013, save=0.7),
                              policy=planning.Policy(max_overhead_percent=1.0))
    assert plan.overhead.percent <= 1.0
    assert overhead.overhead(1, 0.7, (plan.interval_steps - 1) * 0.013).percent > 1.0


def test_time_limit_shorter_than_one_step_plus_save_is_refused():
    with pytest.raises(planning.PlanError, match="shorter than one step plus one save"):
        planning.make_plan(total_steps=10, time_limit=3, costs=costs(), policy=planning.Policy(every_steps=1))


def test_fixed_steps_per_segment_that_does_not_fit_is_refused():
    with pytest.raises(planning.PlanError, match="lower steps_per_segment"):
        planning.make_plan(total_steps=10_000, time_limit=100, costs=costs(),
                           policy=planning.Policy(every_steps=50), steps_per_segment=5000)


def test_replanning_keeps_trained_segments_and_appends_new_ones():
    c = costs()
    first = planning.make_plan(total_steps=1000, time_limit=100, costs=c, policy=planning.Policy(every_steps=50))
    trained = first.segments[:-1] + [first.segments[-1]]
    slower = costs(step=0.2)  # re-measured: only new segments use the new numbers
    second = planning.make_plan(total_steps=3000, time_limit=100, costs=slower,
                                policy=planning.Policy(every_steps=50), frozen=trained)
    assert second.segments[: len(trained)] == trained
    assert second.segments[len(trained)].start == 1000
    assert second.segments[-1].end == 3000


def test_lowering_total_steps_below_trained_steps_is_refused():
    c = costs()
    first = planning.make_plan(total_steps=1000, time_limit=100, costs=c, policy=planning.Policy(every_steps=50))
    with pytest.raises(planning.PlanError, match="already trained"):
        planning.make_plan(total_steps=500, time_limit=100, costs=c, policy=planning.Policy(every_steps=50),
                           frozen=first.segments)


def test_policy_needs_exactly_one_choice():
    with pytest.raises(planning.PlanError):
        planning.Policy()
    with pytest.raises(planning.PlanError):
        planning.Policy(every_steps=3, mtbf_seconds=10)


@pytest.mark.parametrize("text,seconds", [("7d", 604800), ("20s", 20), ("30m", 1800), ("1h30m", 5400),
                                          ("0.5h", 1800), (90, 90), ("250ms", 0.25), ("12", 12)])
def test_durations_in_units_people_type(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["-5s", "ten minutes", "", "5x", -1, "1h-3m", True])
def test_bad_durations_are_refused_with_the_key_named(bad):
    with pytest.raises(DurationError, match="time_limit"):
        parse_duration(bad, "time_limit")


def test_percentages():
    assert parse_percent("2%") == 2
    with pytest.raises(DurationError):
        parse_percent("150%")


def test_planner_cli_prints_the_dsri_example(capsys):
    assert plan_cli(["--train-time", "7d", "--save-time", "20s", "--interval", "30m"]) == 0
    out = capsys.readouterr().out
    assert "NCP  = TT / z = 336" in out
    assert "1.87 h" in out
    assert "1.11 %" in out


def test_planner_cli_max_overhead_gives_the_interval(capsys):
    assert plan_cli(["--train-time", "7d", "--save-time", "20s", "--max-overhead", "2%"]) == 0
    out = capsys.readouterr().out
    assert "16.7 min" in out and "= 2 %" in out


def test_planner_cli_mtbf_prints_young_and_daly(capsys):
    assert plan_cli(["--train-time", "7d", "--save-time", "20s", "--mtbf", "24h"]) == 0
    out = capsys.readouterr().out
    assert "Young" in out and "Daly" in out and "31 min" in out


def test_planner_cli_steps_per_segment(capsys):
    args = ["--train-time", "7d", "--save-time", "20s", "--interval", "30m", "--time-limit", "24h", "--step-time", "0.4s"]
    assert plan_cli(args) == 0
    out = capsys.readouterr().out
    assert "steps in total       = 1512000" in out
    assert "interval in steps    = 4500" in out
    assert "segments (jobs)      = 8" in out


def test_planner_cli_rejects_bad_units(capsys):
    assert plan_cli(["--train-time", "7 weeks", "--save-time", "20s"]) == 2
    assert "--train-time" in capsys.readouterr().err


def test_plan_warns_when_a_save_does_not_fit_the_grace_period():
    slow = planning.Costs(step_seconds=0.1, save_seconds=20, save_seconds_max=25)
    plan = planning.make_plan(total_steps=100_000, time_limit=86400, costs=slow,
                              policy=planning.Policy(every_steps=5000), grace_seconds=30)
    assert any("grace period" in w for w in plan.warnings)
    assert "grace period" in plan_table(plan)
    fast = planning.Costs(step_seconds=0.1, save_seconds=2, save_seconds_max=3)
    plan = planning.make_plan(total_steps=100_000, time_limit=86400, costs=fast,
                              policy=planning.Policy(every_steps=5000), grace_seconds=30)
    assert not plan.warnings


def test_interval_in_epochs_uses_the_measured_steps_per_epoch():
    c = planning.Costs(step_seconds=0.01, save_seconds=0.1, steps_per_epoch=50)
    plan = planning.make_plan(total_steps=1000, time_limit=3600, costs=c, policy=planning.Policy(every_epochs=2))
    assert plan.interval_steps == 100
    assert "= 2 epochs" in plan_table(plan)


def test_evaluation_time_is_planned_with_each_checkpoint():
    without = planning.Costs(step_seconds=0.1, save_seconds=1.0)
    with_eval = planning.Costs(step_seconds=0.1, save_seconds=1.0, eval_seconds=4.0)
    policy = planning.Policy(every_steps=50)
    a = planning.make_plan(total_steps=10_000, time_limit=100, costs=without, policy=policy)
    b = planning.make_plan(total_steps=10_000, time_limit=100, costs=with_eval, policy=policy)
    assert a.steps_per_segment == 800 and b.steps_per_segment == 500  # 6 s vs 10 s per 50-step block
    assert planning.segment_seconds(b.steps_per_segment, 50, with_eval) <= 100


def test_plan_refuses_a_time_limit_that_start_up_dominates():
    c = costs(step=0.001, save=0.003, load=0.1, startup=9.0)
    with pytest.raises(planning.PlanError) as err:
        planning.make_plan(total_steps=7000, time_limit=12, costs=c, policy=planning.Policy(max_overhead_percent=5),
                           max_startup_percent=25)
    msg = str(err.value)
    assert "max_startup_share" in msg and "76 %" in msg  # (9 + 0.1) / 12
    assert "at least 36.4 s" in msg and "--forcerun measure_checkpoint_cost" in msg
    # the same costs plan fine once start-up is a small share of the job
    plan = planning.make_plan(total_steps=7000, time_limit=60, costs=c, policy=planning.Policy(max_overhead_percent=5),
                              max_startup_percent=25)
    assert len(plan.segments) == 1


def test_job_overhead_counts_start_up_restores_saves_and_evaluations():
    c = planning.Costs(step_seconds=0.01, save_seconds=0.5, load_seconds=0.25, startup_seconds=4.0, eval_seconds=0.1)
    plan = planning.make_plan(total_steps=1000, time_limit=100, costs=c, policy=planning.Policy(every_steps=100),
                              steps_per_segment=250)
    j = plan.jobs
    assert j.jobs == 4
    assert j.startup_seconds == pytest.approx(16.0)
    assert j.restore_seconds == pytest.approx(0.75)  # segment 0 starts from a fresh model
    assert j.save_seconds == pytest.approx(12 * 0.5)  # 3 saves per segment of 250 steps (100, 200, 250)
    assert j.eval_seconds == pytest.approx(12 * 0.1)
    assert j.train_seconds == pytest.approx(10.0)
    assert j.percent == pytest.approx(100 * 23.95 / 33.95)
    # the DSRI formula, beside it, counts the saves only
    assert plan.overhead.percent == pytest.approx(100 * 0.5 / 1.0)
    table = plan_table(plan)
    assert "overhead 70.5 %" in table and "(saves only)" in table


def test_a_monitor_the_run_does_not_log_is_refused_with_a_suggestion():
    from segtrain.pipeline import check_monitor
    from segtrain.settings import RunSettings

    logged = {"metric_names": ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]}
    with pytest.raises(planning.PlanError, match="no metric 'val_acc'; did you mean 'val_accuracy'"):
        check_monitor(RunSettings(monitor="val_acc"), logged)
    check_monitor(RunSettings(monitor="val_accuracy"), logged)
    check_monitor(RunSettings(monitor="val_loss"), {"metric_names": ["loss", "lr"]})  # no validation: best = last


@pytest.mark.parametrize("settings, measured, hint", [
    ({}, {}, "set validation_split"),
    ({"script_args": ()}, {}, "seg.steps(loader, evaluate=evaluate)"),
    ({"script_args": (), "framework": "keras"}, {}, "segtrain.keras.fit validation_data="),
    ({"script_args": ()}, {"data_loader": "Lightning's", "evaluates": "the trainer"}, "val_dataloader"),
    ({"script_args": ()}, {"data_loader": "the Trainer's", "evaluates": "the trainer"}, "eval_dataset"),
])
def test_a_run_without_validation_is_told_on_the_terminal_how_to_add_it_in_its_own_way_in(settings, measured, hint,
                                                                                          capsys):
    from segtrain.pipeline import check_monitor
    from segtrain.settings import RunSettings

    check_monitor(RunSettings(name="r", monitor="val_loss", **settings), {"metric_names": ["loss", "lr"], **measured})
    out = capsys.readouterr().out
    assert out.startswith("segtrain: run r: monitor val_loss:") and hint in out, out


def test_background_saves_plan_with_the_blocking_time_and_a_full_last_save_per_job():
    c = planning.Costs(step_seconds=0.01, save_seconds=2.0, snapshot_seconds=0.1, persist_seconds=1.9)
    plan = planning.make_plan(total_steps=100_000, time_limit=3600, costs=c,
                              policy=planning.Policy(max_overhead_percent=1))
    assert plan.async_save and plan.blocking_seconds == 0.1
    # y is what training waits for: z = 100 * 0.1 / 1 = 10 s = 1000 steps (a sync save would need 200 s)
    assert plan.interval_steps == 1000 and plan.overhead.percent == pytest.approx(1.0)
    assert plan.costs.save_seconds == 2.0  # the measured costs stay as measured
    seg = plan.segments[0]
    assert seg.async_save and seg.save_seconds == 2.0  # a stop's save is written in full: the guard's figure
    # one block = 1000 steps (10 s) + 0.1 s; the last save takes the full 2 s
    assert plan.segment_seconds == pytest.approx(plan.steps_per_segment * 0.01 + plan.steps_per_segment / 1000 * 0.1
                                                 + 1.9)
    assert "blocking (copy to host memory; written in the background" in plan_table(plan)
    sync = planning.make_plan(total_steps=100_000, time_limit=3600, costs=c,
                              policy=planning.Policy(max_overhead_percent=1), async_save=False)
    assert not sync.async_save and sync.interval_steps == 20_000 and not sync.segments[0].async_save
    assert "a background save would block" in plan_table(sync)


def test_auto_keeps_tiny_states_synchronous_and_a_write_bounds_the_interval():
    tiny = planning.Costs(step_seconds=0.01, save_seconds=0.004, snapshot_seconds=0.003, persist_seconds=0.004)
    assert not planning.make_plan(total_steps=1000, time_limit=3600, costs=tiny,
                                  policy=planning.Policy(every_steps=100)).async_save
    none = planning.Costs(step_seconds=0.01, save_seconds=2.0)  # a state without snapshots
    forced = planning.make_plan(total_steps=1000, time_limit=3600, costs=none, policy=planning.Policy(every_steps=100),
                                async_save=True)
    assert not forced.async_save and "takes no snapshots" in forced.warnings[0]
    slow_write = planning.Costs(step_seconds=0.01, save_seconds=5.0, snapshot_seconds=0.1, persist_seconds=4.9)
    derived = planning.make_plan(total_steps=100_000, time_limit=3600, costs=slow_write,
                                 policy=planning.Policy(max_overhead_percent=10))
    assert derived.interval_steps == 490 and "raised from 100 to 490 steps" in derived.reason
    fixed = planning.make_plan(total_steps=100_000, time_limit=3600, costs=slow_write,
                               policy=planning.Policy(every_steps=100))
    assert fixed.interval_steps == 100 and "shorter than a background write" in fixed.warnings[0]


def test_a_plan_of_implausibly_many_jobs_is_refused_before_it_is_built():
    """total_steps 10^12 (a typo for 10^6) in 1000-step segments (here 500) grew plan_segments by 100 MB/s."""
    import resource
    import time

    before, t = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    for per in (500, None):  # fixed, and 'auto' (what fits in the time limit)
        with pytest.raises(planning.PlanError, match="check total_steps for a typo"):
            planning.make_plan(total_steps=10**12, time_limit=100, costs=costs(), steps_per_segment=per,
                               policy=planning.Policy(every_steps=50))
    assert time.monotonic() - t < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing was built
    plan = planning.make_plan(total_steps=planning.MAX_SEGMENTS * 10, time_limit=100, costs=costs(),
                              steps_per_segment=10, policy=planning.Policy(every_steps=5))
    assert len(plan.segments) == planning.MAX_SEGMENTS  # the limit itself is allowed
