"""The CLI's tables: aligned columns, kubectl-style, whatever the cells hold."""

from __future__ import annotations

from kimball_grpc.cli.client_commands import format_table


def test_columns_align_left_and_right_under_their_headers() -> None:
    table = format_table(
        ["GOAL", "EVENT", "P(GOAL|EVENT)"],
        [["purchase", "signup", "0.5000"], ["web_purchase", "feature_1", "0.25"]],
        right={2},
    )
    assert table.splitlines() == [
        "GOAL          EVENT      P(GOAL|EVENT)",
        "purchase      signup            0.5000",
        "web_purchase  feature_1           0.25",
    ]


def test_cells_are_printed_as_they_are_never_as_markup() -> None:
    # Event names come from clients: brackets and emoji codes are text, not styling.
    table = format_table(["EVENT", "USERS"], [["[bold]signup[/bold] :smile:", "2"]])
    assert table.splitlines()[1] == "[bold]signup[/bold] :smile:  2"
