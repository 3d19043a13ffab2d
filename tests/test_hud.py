"""The side panel's swarm box in words: the node's numbers as the player reads them."""

from game.hud import rate_text, swarm_box_text
from game.swarm_box import SwarmBox
from swarm.content import ContentRef
from swarm.torrent import SeedStatus, SwarmStatus


def seed(kind: str, digit: str) -> SeedStatus:
    return SeedStatus(ContentRef(kind, digit * 64), progress=1.0, peers=1, upload_rate=0,
                      stepped_back=False)


def test_a_seeding_node_shows_its_peers_rates_and_what_it_shares():
    node = SwarmStatus(running=True, peers=3, upload_rate=1_234_567, download_rate=0,
                       seeded=(seed("model", "a"), seed("model", "b"), seed("skin", "c")),
                       dht_nodes=12)
    shown = swarm_box_text(SwarmBox(node, note="preparing 3 items"))
    assert (shown.state, shown.online, shown.note) == ("seeding", True, "preparing 3 items")
    assert shown.lines == ["peers: 3, DHT nodes: 12", "rates: up 1.2 MB/s, down 0 B/s",
                           "sharing: 2 models, 1 skin"]


def test_states_follow_the_node():
    idle = swarm_box_text(SwarmBox(SwarmStatus(running=True)))
    assert (idle.state, idle.online) == ("idle", True)
    assert idle.lines[-1] == "sharing: nothing yet"
    fetching = SwarmStatus(running=True, fetching=1, seeded=(seed("skin", "d"),))
    assert swarm_box_text(SwarmBox(fetching)).state == "fetching"
    closed = swarm_box_text(SwarmBox(SwarmStatus(running=False)))
    assert (closed.state, closed.online, closed.lines) == ("offline", False, [])


def test_no_node_shows_why():
    off = swarm_box_text(SwarmBox(note="seeding is switched off (swarm.toml)"))
    assert (off.state, off.online, off.note, off.lines) == (
        "off", False, "seeding is switched off (swarm.toml)", [])
    failed = swarm_box_text(SwarmBox(note="port in use", failed=True))
    assert (failed.state, failed.online, failed.note) == ("error", False, "port in use")
    none = swarm_box_text(None)  # the window runs no node
    assert (none.state, none.online, none.note) == ("offline", False, "not seeding")


def test_rates_use_decimal_units():
    assert [rate_text(n) for n in (0, 999, 1000, 54_321, 999_999, 2_500_000, 10**10)] == [
        "0 B/s", "999 B/s", "1.0 KB/s", "54.3 KB/s", "1000.0 KB/s", "2.5 MB/s", "10000.0 MB/s"]
