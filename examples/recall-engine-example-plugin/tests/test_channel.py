"""The example channel against recall-engine's shipped contract suite, plus its own
known answers. Run from this folder: ``python -m pytest``."""

from __future__ import annotations

import pytest

from recall_engine.sdk import ItemRecord, Query
from recall_engine.sdk.testing import ChannelContract, channel_context, open_channel
from recall_engine_example.channel import SameCategoryChannel

TOPICS = ("jazz", "space", "cooking", "finance")
# 160 items, 40 per topic; every fifth item is in a second topic as well.
ITEMS = [
    ItemRecord(
        f"item-{n:03d}",
        title=f"Item {n}",
        categories=(TOPICS[n % 4], *((TOPICS[(n + 1) % 4],) if n % 5 == 0 else ())),
    )
    for n in range(160)
]


@pytest.fixture(scope="module")
def channel():
    ch = open_channel(SameCategoryChannel, channel_context(ITEMS, params={"recent": 3}))
    yield ch
    ch.close()


@pytest.fixture()
def queries():
    jazz = ("item-000", "item-004", "item-008")
    return [
        Query(user_id="u1", history=jazz, exclude=frozenset(jazz)),
        Query(history=("item-001", "item-002")),  # space, then cooking (newer)
        Query(history=("no-such-item", "item-003")),
    ]


class TestSameCategoryContract(ChannelContract):
    """Every check of recall_engine.sdk.testing.ChannelContract, run on this channel."""


def test_the_newest_history_item_decides_the_top_category(channel):
    got = channel.recall(Query(history=("item-001", "item-002")), 10)
    assert all("cooking" in channel.ctx.catalog.categories(i) for i in got.item_ids)


def test_a_bad_recent_param_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"channels\.test\.params\.recent"):
        SameCategoryChannel(channel_context(ITEMS, params={"recent": 0}))
