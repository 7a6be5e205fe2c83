"""`provisioning._emqx`: the EMQX 5 listener configuration and acl.conf.

EMQX cannot run here, so the HOCON is read with pyhocon and checked key by key, and acl.conf is
read with a small Erlang-term reader and evaluated by a small model of EMQX's file authorizer
(first match wins, then ``no_match``; ``${username}`` substituted into the whole filter before
it is split into levels, as EMQX 5.1+ does; shared subscriptions checked as their real filter).
One table of (user, action, topic) cases holds both brokers to the same answers: the EMQX model
must give them, and a real Mosquitto with ``mosquitto_acl`` must give them too (where a
subscription filter is wider than the ACL, Mosquitto grants it and filters each delivery while
EMQX refuses it: those rows say so). The table starts with the cases of
tests/test_provision_cli.py's real-Mosquitto ACL test.
"""

from __future__ import annotations

import itertools
import queue
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyhocon import ConfigFactory, ConfigTree

from provisioning._emqx import EMQX_VERSION, emqx_acl, emqx_listener_conf
from provisioning._pki import IdentityError

from .brokers import Broker, ClientFiles, MqttClient, make_pki
from .conftest import UNIT

# --- an Erlang-term reader (the subset acl.conf uses) ---------------------------------------------


@dataclass(frozen=True)
class Atom:
    name: str


TOKEN = re.compile(r"""
    (?P<space>\s+|%[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<qatom>'(?:[^'\\]|\\.)*')
  | (?P<atom>[a-z][A-Za-z0-9_@]*)
  | (?P<int>-?[0-9]+)
  | (?P<punct>[{}\[\],])
  | (?P<dot>\.(?=\s|%|$))
""", re.VERBOSE)


def tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise SyntaxError(f"cannot read {text[pos:pos + 20]!r} at {pos}")
        pos = m.end()
        if m.lastgroup != "space":
            out.append((m.lastgroup or "", m.group()))
    return out


def unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted[1:-1])


def read_terms(text: str) -> list[Any]:
    """The terms of a file of ``Term.`` (what Erlang's ``file:consult`` reads): tuples as
    tuples, lists as lists, strings as str, atoms as ``Atom``, integers as int."""
    toks, terms = tokens(text), []
    pos = 0

    def term() -> Any:
        nonlocal pos
        if pos >= len(toks):
            raise SyntaxError("unexpected end of file")
        kind, value = toks[pos]
        pos += 1
        if kind == "string":
            return unescape(value)
        if kind in ("atom", "qatom"):
            return Atom(value if kind == "atom" else unescape(value))
        if kind == "int":
            return int(value)
        if value in ("{", "["):
            close, items = "}" if value == "{" else "]", []
            if toks[pos][1] != close:
                while True:
                    items.append(term())
                    sep = toks[pos][1]
                    pos += 1
                    if sep == close:
                        break
                    if sep != ",":
                        raise SyntaxError(f"expected ',' or {close!r}, got {sep!r}")
            else:
                pos += 1
            return tuple(items) if close == "}" else items
        raise SyntaxError(f"unexpected {value!r}")

    while pos < len(toks):
        terms.append(term())
        if pos >= len(toks) or toks[pos][0] != "dot":
            raise SyntaxError("a term must end with '.'")
        pos += 1
    return terms


@pytest.mark.parametrize("bad", ['{allow, all}', '{allow, all.', '{allow, all}}.', '{allow all}.',
                                 '{allow, "x}.', '[a, b.'])
def test_the_term_reader_refuses_malformed_input(bad: str) -> None:
    with pytest.raises(SyntaxError):
        read_terms(bad)


def test_the_term_reader_reads_what_acl_conf_holds() -> None:
    text = '%% c\n{allow, {user, "a\\"b"}, subscribe, ["x/#", "y"]}.\n{deny, all}. % end\n'
    assert read_terms(text) == [(Atom("allow"), (Atom("user"), 'a"b'), Atom("subscribe"),
                                 ["x/#", "y"]), (Atom("deny"), Atom("all"))]


# --- a model of EMQX's file authorizer ------------------------------------------------------------

ALLOW, DENY, ALL = Atom("allow"), Atom("deny"), Atom("all")
ACTIONS = {Atom("publish"), Atom("subscribe"), ALL}


def check_rules(terms: list[Any]) -> None:
    """The shapes EMQX 5 compiles (``emqx_authz_rule:compile``), nothing else."""
    for rule in terms:
        assert isinstance(rule, tuple) and rule[0] in (ALLOW, DENY), rule
        if len(rule) == 2:
            assert rule[1] == ALL, rule
            continue
        assert len(rule) == 4, rule
        _, who, action, topics = rule
        assert who == ALL or (isinstance(who, tuple) and len(who) == 2 and who[0] in (
            Atom("user"), Atom("username")) and isinstance(who[1], str)), who
        assert action in ACTIONS, action
        assert isinstance(topics, list) and topics and all(isinstance(t, str) for t in topics)


def topic_match(words: list[str], filt: list[str]) -> bool:
    """``emqx_topic:match/2`` on levels; ``words`` may itself be a filter (a subscription):
    a ``+``/``#`` in it is matched only by the same wildcard or a wider one in the rule."""
    if words and words[0].startswith("$") and filt and filt[0] in ("+", "#"):
        return False
    if filt == ["#"]:
        return True
    if not words or not filt:
        return not words and not filt
    head_ok = words[0] == filt[0] or (filt[0] == "+" and words[0] != "#")
    return head_ok and topic_match(words[1:], filt[1:])


def real_topic(topic: str) -> str:
    """``emqx_topic:get_shared_real_topic``: ``$share/<group>/<filter>`` is checked as
    ``<filter>``."""
    if topic.startswith("$share/"):
        return topic.split("/", 2)[2]
    return topic


def authorize(terms: list[Any], username: str, action: str, topic: str) -> str:
    """``allow`` or ``deny`` for one request, as EMQX's file source with ``no_match = deny``."""
    words = real_topic(topic).split("/") if action == "subscribe" else topic.split("/")
    for rule in terms:
        if len(rule) == 2:
            return rule[0].name
        permission, who, act, filters = rule
        if act not in (Atom(action), ALL):
            continue
        if who != ALL and who[1] != username:
            continue
        for filt in filters:
            rendered = filt.replace("${username}", username).replace("${clientid}", "<id>")
            if topic_match(words, rendered.split("/")):
                return permission.name
    return "deny"                                              # authorization.no_match


# --- the shared table -----------------------------------------------------------------------------

GW, GW2, COLLECTOR, RELAY = f"{UNIT}/GW0001", f"{UNIT}/GW0002", "collector-js1", "collector-js"
MINE, OTHER = f"kemon/v1/{UNIT}/GW0001", f"kemon/v1/{UNIT}/GW0002"


@dataclass(frozen=True)
class Case:
    user: str
    action: str            # publish | subscribe
    topic: str
    allowed: bool
    sample: str = ""       # subscribe: a topic the filter matches, published by ``writer``
    writer: str = ""       # (Mosquitto checks delivery, not the SUBSCRIBE itself)
    mosquitto: bool | None = None   # Mosquitto's answer where it differs (see below)

    @property
    def mosquitto_allowed(self) -> bool:
        return self.allowed if self.mosquitto is None else self.mosquitto


CASES = [
    # tests/test_provision_cli.py::test_provisioned_mosquitto_allows_and_denies_as_the_acl_says
    Case(COLLECTOR, "subscribe", "kemon/v1/+/+/up/#", True, f"{MINE}/up/data", GW),
    Case(GW, "subscribe", f"{MINE}/down/#", True, f"{MINE}/down/resend", COLLECTOR),
    Case(GW, "publish", f"{MINE}/up/data", True),
    Case(GW, "publish", f"{OTHER}/up/data", False),                  # not its prefix
    Case(COLLECTOR, "publish", f"{MINE}/down/resend", True),
    Case(COLLECTOR, "publish", f"{MINE}/up/data", False),            # not a relay
    # and more of the same ACL
    Case(COLLECTOR, "subscribe", "$share/collectors/kemon/v1/+/+/up/data", True,
         f"{OTHER}/up/data", GW2),
    Case(COLLECTOR, "subscribe", "kemon/v1/+/+/down/#", False, f"{MINE}/down/x", COLLECTOR),
    # A filter wider than the ACL: EMQX refuses the SUBSCRIBE; Mosquitto grants it and then
    # delivers only the topics the ACL lets the client read. Nobody reads more either way.
    Case(COLLECTOR, "subscribe", "#", False, f"{MINE}/up/x", GW, mosquitto=True),
    Case(GW, "subscribe", "kemon/v1/+/+/down/#", False, f"{MINE}/down/x", COLLECTOR,
         mosquitto=True),
    Case(GW, "publish", f"{MINE}/up", True),                         # '#' takes the parent too
    Case(GW, "publish", f"{MINE}/down/x", False),
    Case(GW, "publish", f"kemon/v1/{UNIT}/up/x", False),
    Case(GW, "subscribe", f"{OTHER}/down/#", False, f"{OTHER}/down/x", COLLECTOR),
    Case(GW, "subscribe", "kemon/v1/+/+/down/#", False, f"{OTHER}/down/x", COLLECTOR),
    Case(GW, "subscribe", f"{MINE}/up/#", False, f"{MINE}/up/x", GW),
    Case(GW2, "publish", f"{OTHER}/up/data", True),
    Case(RELAY, "publish", f"{MINE}/up/data", True),
    Case(RELAY, "subscribe", "kemon/v1/+/+/down/#", True, f"{MINE}/down/x", COLLECTOR),
    Case(RELAY, "subscribe", "kemon/v1/+/+/up/#", False, f"{MINE}/up/x", GW),
    Case(RELAY, "publish", f"{MINE}/down/x", False),
    Case("collector-stranger", "publish", f"{MINE}/down/x", False),
    Case("collector-stranger", "subscribe", "kemon/v1/+/+/up/#", False, f"{MINE}/up/x", GW),
]


def test_emqx_acl_gives_the_table_s_answers() -> None:
    terms = read_terms(emqx_acl(["js1"], ["js"]))
    check_rules(terms)
    assert terms[-1] == (DENY, ALL)
    got = [authorize(terms, c.user, c.action, c.topic) == "allow" for c in CASES]
    assert got == [c.allowed for c in CASES], [c for c, g in zip(CASES, got, strict=True)
                                               if g != c.allowed]


def test_the_model_is_not_blind() -> None:
    """Without the final deny and with an allow-all, the same evaluation allows what the ACL
    forbids; with no rules at all, no_match denies."""
    terms = read_terms(emqx_acl(["js1"], ["js"]))
    opened = [*terms[:-1], (ALLOW, ALL)]
    assert authorize(opened, GW, "publish", f"{OTHER}/up/data") == "allow"
    assert authorize([], COLLECTOR, "subscribe", "kemon/v1/+/+/up/#") == "deny"
    # a rule that substituted ${username} as one level (EMQX 5.0 before 5.0.16) would never
    # match a gateway: the table would catch it
    one_level = [(ALLOW, ALL, Atom("publish"), ["kemon/v1/${username}/up/#"])]
    assert topic_match(f"{MINE}/up/x".split("/"), ["kemon", "v1", GW, "up", "#"]) is False
    assert authorize(one_level, GW, "publish", f"{MINE}/up/x") == "allow"


def test_mosquitto_gives_the_same_answers(tmp_path: Path) -> None:
    """The table against a real Mosquitto running ``mosquitto_acl(["js1"], ["js"])``: publish
    by its PUBACK (0x87 when denied), subscribe by whether a message the writer publishes is
    delivered."""
    pki = make_pki(tmp_path / "pki")
    ids: dict[str, ClientFiles] = {GW: pki.gateway(UNIT, "GW0001"),
                                   GW2: pki.gateway(UNIT, "GW0002"),
                                   COLLECTOR: pki.collector("js1"), RELAY: pki.collector("js"),
                                   "collector-stranger": pki.collector("stranger")}
    counter = itertools.count()

    def client(user: str) -> MqttClient:
        return MqttClient.connect(broker, ids[user], f"c{next(counter)}")

    got = []
    with Broker(pki, tmp_path / "broker", collectors=["js1"], relays=["js"]) as broker:
        for case in CASES:
            if case.action == "publish":
                with client(case.user) as c:
                    got.append(not c.publish(case.topic, b"x").is_failure)
                continue
            with client(case.user) as sub, client(case.writer) as writer:
                sub.subscribe(case.topic)
                assert not writer.publish(case.sample, b"x").is_failure, case
                try:
                    got.append(sub.expect(timeout=0.5 if not case.allowed else 5).topic
                               == case.sample)
                except queue.Empty:
                    got.append(False)
    assert got == [c.mosquitto_allowed for c in CASES], [
        c for c, g in zip(CASES, got, strict=True) if g != c.mosquitto_allowed]


# --- acl.conf as text -----------------------------------------------------------------------------

def test_emqx_acl_refuses_a_bad_collector_name() -> None:
    with pytest.raises(IdentityError):
        emqx_acl(["js/1"])


def test_emqx_acl_without_collectors_still_ends_in_deny() -> None:
    terms = read_terms(emqx_acl())
    check_rules(terms)
    assert [t[0] for t in terms] == [ALLOW, ALLOW, DENY] and terms[-1] == (DENY, ALL)
    assert EMQX_VERSION in emqx_acl()


# --- the HOCON ------------------------------------------------------------------------------------

def parse(text: str) -> ConfigTree:
    return ConfigFactory.parse_string(text)


def test_listener_conf_keys(tmp_path: Path) -> None:
    out = tmp_path / "emqx out \"quoted\""      # a path that needs escaping
    conf = parse(emqx_listener_conf(out, 8883, "0.0.0.0"))
    ssl = conf["listeners.ssl.default"]
    assert ssl["enable"] is True and ssl["bind"] == "0.0.0.0:8883"
    opts = ssl["ssl_options"]
    assert opts["cacertfile"] == str(out.resolve() / "ca.pem")
    assert opts["certfile"] == str(out.resolve() / "server.pem")
    assert opts["keyfile"] == str(out.resolve() / "server.key")
    assert opts["verify"] == "verify_peer" and opts["fail_if_no_peer_cert"] is True
    assert opts["versions"] == ["tlsv1.3", "tlsv1.2"]
    for other in ("tcp", "ws", "wss"):                  # EMQX enables these by default
        assert conf[f"listeners.{other}.default.enable"] is False, other
    assert conf["mqtt.peer_cert_as_username"] == "cn"
    assert conf["mqtt.max_mqueue_len"] == 320_000 and conf["mqtt.max_inflight"] == 1000
    authz = conf["authorization"]
    assert authz["no_match"] == "deny" and authz["deny_action"] == "disconnect"
    [source] = authz["sources"]
    assert dict(source) == {"type": "file", "enable": True,
                            "path": str(out.resolve() / "acl.conf")}
    assert "topic_template_allow" not in authz           # only for EMQX 6.3+, commented out
    text = emqx_listener_conf(out, 8883, "0.0.0.0")
    assert "# authorization.topic_template_allow.slash = true" in text
    assert f"EMQX {EMQX_VERSION}" in text


def test_listener_bind_forms(tmp_path: Path) -> None:
    assert parse(emqx_listener_conf(tmp_path, 8883))["listeners.ssl.default.bind"] == 8883
    assert parse(emqx_listener_conf(tmp_path, 9883, "::"))[
        "listeners.ssl.default.bind"] == "[::]:9883"
    assert parse(emqx_listener_conf(tmp_path, 8883, "10.0.0.5", max_queued=5, max_inflight=7))[
        "mqtt"] == {"peer_cert_as_username": "cn", "max_mqueue_len": 5, "max_inflight": 7}
    with pytest.raises(ValueError, match="IP address"):
        emqx_listener_conf(tmp_path, 8883, "broker.example")


def test_the_hocon_check_can_fail() -> None:
    """pyhocon refuses what EMQX would refuse to read at all."""
    with pytest.raises(Exception, match=r"(?i)expected|unexpected|parse"):
        parse("listeners.ssl.default {\n  bind = \"0.0.0.0:8883\"\n")
