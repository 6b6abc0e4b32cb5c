import pytest

from slim_callbacks.schedule import (
    CallableSchedule,
    ConstantSchedule,
    CubicSchedule,
    ExponentialSchedule,
    LinearSchedule,
    PolynomialSchedule,
    schedule_from_config,
)


def test_cubic_agp_values_at_epoch_boundaries():
    s = CubicSchedule(initial=0.0, final=0.8, start=1, end=4)
    spe = 10
    assert s.value_at(0, spe) == 0.0
    assert s.value_at(10, spe) == 0.0  # at start
    # within an epoch the value is held (changes only at epoch boundaries)
    assert s.value_at(15, spe) == pytest.approx(0.0)
    assert s.value_at(20, spe) == pytest.approx(0.8 * (1 - (2 / 3) ** 3))
    assert s.value_at(29, spe) == pytest.approx(0.8 * (1 - (2 / 3) ** 3))
    assert s.value_at(30, spe) == pytest.approx(0.8 * (1 - (1 / 3) ** 3))
    assert s.value_at(40, spe) == pytest.approx(0.8)
    assert s.value_at(1000, spe) == pytest.approx(0.8)


def test_step_units_and_frequency():
    s = LinearSchedule(initial=0.0, final=1.0, start=0, end=100, unit="step")
    assert s.value_at(50) == pytest.approx(0.5)
    s = LinearSchedule(initial=0.0, final=1.0, start=0, end=100, unit="step", frequency=30)
    assert s.value_at(59) == pytest.approx(0.3)
    assert s.value_at(60) == pytest.approx(0.6)


def test_epoch_schedule_with_frequency_changes_within_epoch():
    s = LinearSchedule(initial=0.0, final=1.0, start=0, end=2, frequency=5)
    assert s.value_at(7, steps_per_epoch=10) == pytest.approx(0.25)


def test_gradient_accumulation_counts_updates():
    # 100 batches/epoch with accumulate=4 -> 25 updates/epoch: the value at the end of epoch 1
    # is the same as without accumulation, counted in updates.
    s = LinearSchedule(initial=0.0, final=1.0, start=0, end=2)
    assert s.value_at(25, steps_per_epoch=25) == pytest.approx(0.5)
    assert s.value_at_epoch(1, 25) == pytest.approx(0.5)


def test_exponential_and_polynomial_shapes():
    e = ExponentialSchedule(initial=1.0, final=100.0, start=0, end=2, unit="step")
    assert e.value_at(1) == pytest.approx(10.0)
    p = PolynomialSchedule(initial=1.0, final=0.0, start=0, end=10, unit="step", power=2)
    assert p.value_at(5) == pytest.approx(0.25)


def test_constant_and_callable():
    assert ConstantSchedule(final=0.3).value_at(123, 10) == 0.3
    c = ConstantSchedule(initial=0.0, final=1.0, start=2)
    assert c.value_at(19, 10) == 0.0 and c.value_at(20, 10) == 1.0
    f = CallableSchedule(fn=lambda step, spe: step / 10)
    assert f.value_at(3) == pytest.approx(0.3)
    with pytest.raises(TypeError):
        f.get_config()


@pytest.mark.parametrize(
    "schedule",
    [
        CubicSchedule(initial=0.1, final=0.9, start=1, end=5),
        LinearSchedule(initial=0.0, final=2.0, start=0, end=7, unit="step", frequency=2),
        PolynomialSchedule(initial=1.0, final=0.0, start=0, end=3, power=1.5),
        ExponentialSchedule(initial=0.5, final=4.0, start=0, end=3),
        ConstantSchedule(final=0.25),
    ],
)
def test_config_round_trip(schedule):
    again = schedule_from_config(schedule.get_config())
    assert type(again) is type(schedule)
    assert again == schedule
    for step in (0, 3, 17, 40, 90):
        assert again.value_at(step, 10) == schedule.value_at(step, 10)


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="before start"):
        LinearSchedule(initial=0, final=1, start=5, end=2)
    with pytest.raises(ValueError, match="valid kinds"):
        schedule_from_config({"kind": "zigzag"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['finale'\]"):
        schedule_from_config({"kind": "linear", "finale": 1})
    with pytest.raises(ValueError, match="unit"):
        LinearSchedule(unit="minute")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        LinearSchedule(final=1, start=0, end=2).value_at(5)
    with pytest.raises(ValueError, match="exponential"):
        ExponentialSchedule(initial=0.0, final=1.0, end=1)
