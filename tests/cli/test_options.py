"""The node's options are declared once and every command that runs nodes takes them."""

from __future__ import annotations

from dataclasses import fields

import click
import pytest

from dslth_edge.cli.fleet import fleet
from dslth_edge.cli.options import FLEET_SHAPE, NETWORK, NODE, OUTPUT, apply, opt, option_names
from dslth_edge.cli.simulate import simulate
from dslth_edge.cli.train import train
from dslth_edge.fleet.device_node import NodeRunOptions
from dslth_edge.fleet.plan import FleetOptions
from dslth_edge.fleet.solo import FleetTrainOptions, TrainOptions

RUN = fleet.commands["run"]


def params(cmd: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in cmd.params if p.name}


@pytest.mark.parametrize("cmd, groups, skipped", [
    (train, (NODE, FLEET_SHAPE, NETWORK, OUTPUT), set()),
    (simulate, (NODE, FLEET_SHAPE, OUTPUT), {"for_device"}),  # simulate labels MCU nodes itself
    (RUN, (NODE, FLEET_SHAPE, NETWORK, OUTPUT), {"for_device"}),
])
def test_every_command_takes_the_shared_options(cmd: click.Command, groups: tuple, skipped: set[str]) -> None:
    have = params(cmd)
    for field in set(option_names(*groups)) - skipped:
        assert field in have, f"{cmd.name} lacks the option of {field}"
    # the same flags, the same types, wherever they appear
    declared = {o.field: o for g in groups for o in g}
    for field, o in declared.items():
        if field in have:
            assert set(o.flags) <= set(have[field].opts), (cmd.name, field)


def test_the_fixes_of_the_drift() -> None:
    assert {"group_lasso", "stale_after", "resume", "overwrite"} <= set(params(simulate))
    assert {"resume", "resume_or_start", "ca_file", "cert_file", "key_file", "insecure", "allow_solo"} <= set(params(RUN))
    assert {"algorithm", "local_steps", "drop_threshold", "ft_recompute"} <= set(params(train))


def test_every_option_lands_in_a_library_field() -> None:
    """Each shared option fills a field of the dataclass its command builds (or is parsed on the way)."""
    parsed_on_the_way = {"round_deadline", "password_file", "mqtt_protocol", "broker", "log_every", "log_format",
                         "as_json"}
    library = {f.name for cls in (TrainOptions, FleetTrainOptions, FleetOptions, NodeRunOptions) for f in fields(cls)}
    for field in option_names(NODE, FLEET_SHAPE, NETWORK, OUTPUT):
        assert field in library or field in parsed_on_the_way, field


def test_adding_an_option_is_one_line() -> None:
    extra = (opt("--roster", default=None, help="The fleet roster."),)

    @click.command()
    @apply(NODE, extra)
    def cmd(**kw: object) -> None:
        pass

    assert "roster" in params(cmd) and "keep" in params(cmd)
    with pytest.raises(TypeError, match="declared twice"):
        apply(NODE)(cmd)
