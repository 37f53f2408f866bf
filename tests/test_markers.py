"""The audit markers: stages and deliberate CPU routes nest, and set nothing but context variables."""

from __future__ import annotations

from tortoise_xpu.backends.markers import NO_STAGE, cpu_route, current_route, current_stage, stage


def test_stage_and_route_markers_nest():
    assert current_stage() == NO_STAGE == "other"
    with stage("ar"):
        with stage("clvp"):
            assert current_stage() == "clvp"
        assert current_stage() == "ar"
    assert current_stage() == "other"


def test_cpu_route_nests_and_works_as_a_decorator():
    @cpu_route("float64 tables on the host")
    def table() -> str | None:
        return current_route()

    assert current_route() is None
    with cpu_route("outer"):
        assert current_route() == "outer"
        assert table() == "float64 tables on the host"
        assert current_route() == "outer"
    assert current_route() is None
