//! RFC 8955 / RFC 8956 Flowspec routes -> ampguard policies: pure, no I/O.
//!
//! A route is a list of match components (destination and source prefix,
//! protocol, ports, packet length, fragment, ...) and actions carried in
//! extended communities (traffic-rate, traffic-action, redirect, remark).
//! ampguard's data plane matches per victim prefix, by vector (the UDP source
//! port's vector, or the `fragment` vector for non-first fragments), with a
//! payload-size condition: a route becomes a policy only when that matches
//! exactly the same packets. Anything else is refused with a reason; nothing
//! is approximated.
//!
//! Numeric components are evaluated over their whole domain (ports and
//! lengths 0..=65535, protocols 0..=255), so any mix of `==`, `>=`, `!=`,
//! `&` and `|` that comes down to a vector's ports is accepted, and anything
//! that does not is refused.

use std::{collections::BTreeMap, fmt::Write as _};

use ipnet::IpNet;
use xdp_common::vector::FRAGMENT;

use crate::{dataplane::rules::Verb, profiles::RuleSpec, vectors::VectorTable};

/// Component types (RFC 8955 section 4.2.2, RFC 8956 section 3).
pub const DST_PREFIX: u8 = 1;
pub const SRC_PREFIX: u8 = 2;
pub const PROTOCOL: u8 = 3;
pub const PORT: u8 = 4;
pub const DST_PORT: u8 = 5;
pub const SRC_PORT: u8 = 6;
pub const ICMP_TYPE: u8 = 7;
pub const ICMP_CODE: u8 = 8;
pub const TCP_FLAGS: u8 = 9;
pub const PACKET_LEN: u8 = 10;
pub const DSCP: u8 = 11;
pub const FRAGMENT_BITS: u8 = 12;
pub const FLOW_LABEL: u8 = 13;

const OP_AND: u8 = 0x40;
const OP_LT: u8 = 0x04;
const OP_GT: u8 = 0x02;
const OP_EQ: u8 = 0x01;
const OP_NOT: u8 = 0x02;
const OP_MATCH: u8 = 0x01;

/// Fragment bitmask bits (RFC 8955 section 4.2.2.12).
const FRAG_DF: u64 = 0x01;
const FRAG_ISF: u64 = 0x02;
const FRAG_FF: u64 = 0x04;
const FRAG_LF: u64 = 0x08;

/// UDP payload = IPv4 total length - 28 (20-byte header, no options, and the
/// 8-byte UDP header); IPv6: the length RFC 8956 matches excludes the fixed
/// header, so payload = length - 8 (no extension headers).
const V4_OVERHEAD: u32 = 28;
const V6_OVERHEAD: u32 = 8;

/// One {op, value} pair of a numeric or bitmask component, as on the wire
/// (the end-of-list and length bits are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    pub op: u8,
    pub value: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Component {
    /// Destination (1) or source (2) prefix; `offset` is RFC 8956's (IPv6).
    Prefix { kind: u8, prefix: IpNet, offset: u8 },
    /// Any other component: numeric or bitmask items.
    Items { kind: u8, items: Vec<Item> },
    /// A component this code cannot read (e.g. a MAC address of L2VPN Flowspec).
    Unknown { kind: u8 },
}

impl Component {
    pub fn kind(&self) -> u8 {
        match self {
            Component::Prefix { kind, .. } | Component::Items { kind, .. } | Component::Unknown { kind } => *kind,
        }
    }
}

/// An action from the route's extended communities (RFC 8955 section 7).
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// traffic-rate-bytes (0x8006): 0 = discard, else bytes per second.
    TrafficRate { bytes_per_sec: f32 },
    /// traffic-action (0x8007).
    TrafficAction { terminal: bool, sample: bool },
    /// Any redirect (0x8008, 0x8108, 0x8208, IPv6 0x000d/0x800b).
    Redirect(String),
    /// traffic-marking (0x8009).
    Remark(u32),
    /// A Flowspec action community this code does not know (type and subtype).
    Unknown(u32),
}

/// A Flowspec route as the speaker hands it over.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub v6: bool,
    pub components: Vec<Component>,
    pub actions: Vec<Action>,
}

/// Why a route is refused: a fixed set (a metric label) and the words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    NoDestination,
    SourcePrefix,
    NotUdp,
    Port,
    DestinationPort,
    SourcePort,
    Icmp,
    TcpFlags,
    PacketLength,
    Dscp,
    Fragment,
    FlowLabel,
    UnknownComponent,
    Operator,
    NoAction,
    Rate,
    Redirect,
    Remark,
    Sample,
    UnknownAction,
    /// Checks after the mapping (sync.rs and the store).
    OutsideNetworks,
    Validation,
    TooBroad,
    Allowlisted,
    Conflict,
    Quota,
    Invalid,
}

impl Reason {
    pub const ALL: [Reason; 27] = [
        Reason::NoDestination,
        Reason::SourcePrefix,
        Reason::NotUdp,
        Reason::Port,
        Reason::DestinationPort,
        Reason::SourcePort,
        Reason::Icmp,
        Reason::TcpFlags,
        Reason::PacketLength,
        Reason::Dscp,
        Reason::Fragment,
        Reason::FlowLabel,
        Reason::UnknownComponent,
        Reason::Operator,
        Reason::NoAction,
        Reason::Rate,
        Reason::Redirect,
        Reason::Remark,
        Reason::Sample,
        Reason::UnknownAction,
        Reason::OutsideNetworks,
        Reason::Validation,
        Reason::TooBroad,
        Reason::Allowlisted,
        Reason::Conflict,
        Reason::Quota,
        Reason::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoDestination => "no_destination",
            Reason::SourcePrefix => "source_prefix",
            Reason::NotUdp => "not_udp",
            Reason::Port => "port",
            Reason::DestinationPort => "destination_port",
            Reason::SourcePort => "source_port",
            Reason::Icmp => "icmp",
            Reason::TcpFlags => "tcp_flags",
            Reason::PacketLength => "packet_length",
            Reason::Dscp => "dscp",
            Reason::Fragment => "fragment",
            Reason::FlowLabel => "flow_label",
            Reason::UnknownComponent => "unknown_component",
            Reason::Operator => "operator",
            Reason::NoAction => "no_action",
            Reason::Rate => "rate",
            Reason::Redirect => "redirect",
            Reason::Remark => "remark",
            Reason::Sample => "sample",
            Reason::UnknownAction => "unknown_action",
            Reason::OutsideNetworks => "outside_networks",
            Reason::Validation => "validation",
            Reason::TooBroad => "too_broad",
            Reason::Allowlisted => "allowlisted",
            Reason::Conflict => "conflict",
            Reason::Quota => "quota",
            Reason::Invalid => "invalid",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

fn refuse<T>(reason: Reason, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal { reason, message: message.into() })
}

/// What a route becomes: the victim and its rules, by vector name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub victim: IpNet,
    pub rules: BTreeMap<String, RuleSpec>,
}

/// Whether the numeric items match `x`: OR of AND-groups (an item with the
/// AND bit joins the previous one's group).
fn numeric_matches(items: &[Item], x: u64) -> bool {
    any_group(items, |it| {
        let (lt, gt, eq) = (it.op & OP_LT != 0, it.op & OP_GT != 0, it.op & OP_EQ != 0);
        (lt && x < it.value) || (gt && x > it.value) || (eq && x == it.value)
    })
}

fn bitmask_matches(items: &[Item], data: u64) -> bool {
    any_group(items, |it| {
        let hit = if it.op & OP_MATCH != 0 { data & it.value == it.value } else { data & it.value != 0 };
        hit != (it.op & OP_NOT != 0)
    })
}

/// RFC 8955's combination of a component's items: items joined by the AND
/// bit form a group, and the component matches if any group does.
fn any_group(items: &[Item], matches: impl Fn(&Item) -> bool) -> bool {
    let mut any = false;
    let mut group: Option<bool> = None;
    for it in items {
        let m = matches(it);
        if it.op & OP_AND != 0 {
            group = Some(group.unwrap_or(true) && m);
        } else {
            any |= group.unwrap_or(false);
            group = Some(m);
        }
    }
    any || group.unwrap_or(false)
}

/// The always-false (000) and always-true (111) comparisons: RFC 8955 reads
/// 000 as false, but GoBGP writes "true" as 000. Which one a router meant is
/// unknowable, so such items are refused rather than guessed.
fn ambiguous_operator(items: &[Item]) -> bool {
    items.iter().any(|i| matches!(i.op & (OP_LT | OP_GT | OP_EQ), 0 | 7))
}

/// The values in 0..=max a numeric component matches (sorted).
fn matching(items: &[Item], max: u64) -> Vec<u64> {
    (0..=max).filter(|&x| numeric_matches(items, x)).collect()
}

/// A set of values as "53, 123, 1000-1400" (for messages).
fn describe(values: &[u64]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        if j == i {
            let _ = write!(out, "{}", values[i]);
        } else {
            let _ = write!(out, "{}-{}", values[i], values[j]);
        }
        if out.len() > 120 {
            out.push_str(", ...");
            break;
        }
        i = j + 1;
    }
    if out.is_empty() {
        out.push_str("nothing");
    }
    out
}

/// The packet states a fragment component tells apart: (flags, is a
/// non-first fragment). DF only matters for unfragmented packets.
const FRAG_STATES: [(u64, bool); 6] = [
    (0, false),
    (FRAG_DF, false),
    (FRAG_ISF | FRAG_FF, false),
    (FRAG_ISF, true),
    (FRAG_ISF | FRAG_LF, true),
    (FRAG_ISF | FRAG_LF | FRAG_DF, true),
];

/// The canonical text of a route's NLRI: the reconcile key (stable across
/// restarts and speakers) and what status and logs show.
pub fn canonical(route: &Route) -> String {
    let mut comps: Vec<&Component> = route.components.iter().collect();
    comps.sort_by_key(|c| c.kind());
    let mut out = String::from(if route.v6 { "ipv6" } else { "ipv4" });
    for c in comps {
        match c {
            Component::Prefix { kind, prefix, offset } => {
                let name = if *kind == DST_PREFIX { "destination" } else { "source" };
                let _ = write!(out, " {name} {prefix}");
                if *offset != 0 {
                    let _ = write!(out, " offset {offset}");
                }
            }
            Component::Items { kind, items } => {
                let _ = write!(out, " {}", component_name(*kind));
                for (n, it) in items.iter().enumerate() {
                    let sep = if n == 0 {
                        " "
                    } else if it.op & OP_AND != 0 {
                        "&"
                    } else {
                        " "
                    };
                    let _ = write!(out, "{sep}{}", op_text(*kind, it.op));
                    let _ = write!(out, "{}", it.value);
                }
            }
            Component::Unknown { kind } => {
                let _ = write!(out, " type{kind}");
            }
        }
    }
    out
}

fn component_name(kind: u8) -> String {
    match kind {
        PROTOCOL => "protocol".into(),
        PORT => "port".into(),
        DST_PORT => "destination-port".into(),
        SRC_PORT => "source-port".into(),
        ICMP_TYPE => "icmp-type".into(),
        ICMP_CODE => "icmp-code".into(),
        TCP_FLAGS => "tcp-flags".into(),
        PACKET_LEN => "packet-length".into(),
        DSCP => "dscp".into(),
        FRAGMENT_BITS => "fragment".into(),
        FLOW_LABEL => "label".into(),
        k => format!("type{k}"),
    }
}

fn op_text(kind: u8, op: u8) -> &'static str {
    if matches!(kind, TCP_FLAGS | FRAGMENT_BITS) {
        return match op & (OP_NOT | OP_MATCH) {
            0 => "",
            OP_MATCH => "=",
            OP_NOT => "!",
            _ => "!=",
        };
    }
    match op & (OP_LT | OP_GT | OP_EQ) {
        0 => "false:",
        1 => "==",
        2 => ">",
        3 => ">=",
        4 => "<",
        5 => "<=",
        6 => "!=",
        _ => "true:",
    }
}

/// Map a route to a policy, or say exactly why it cannot be enforced.
pub fn map_route(route: &Route, vectors: &VectorTable) -> Result<Mapped, Refusal> {
    let mut victim = None;
    let (mut protocol, mut sport, mut length, mut fragment) = (None, None, None, None);
    for c in &route.components {
        let items = match c {
            Component::Prefix { kind: DST_PREFIX, prefix, offset } => {
                if *offset != 0 {
                    return refuse(
                        Reason::NoDestination,
                        format!("destination {prefix} has offset {offset}; ampguard matches whole prefixes"),
                    );
                }
                victim = Some(*prefix);
                continue;
            }
            Component::Prefix { prefix, .. } => {
                if prefix.prefix_len() == 0 {
                    continue;
                }
                return refuse(Reason::SourcePrefix, format!("source prefix {prefix}: ampguard's policies apply to every source"));
            }
            Component::Unknown { kind } => {
                return refuse(Reason::UnknownComponent, format!("component type {kind} cannot be read or enforced"));
            }
            Component::Items { items, .. } => items,
        };
        if ambiguous_operator(items) {
            return refuse(
                Reason::Operator,
                format!("{}: an always-true or always-false operator (implementations disagree on its encoding)", component_name(c.kind())),
            );
        }
        let name = component_name(c.kind());
        match c.kind() {
            PROTOCOL => protocol = Some(matching(items, 255)),
            SRC_PORT => sport = Some(matching(items, 65535)),
            PACKET_LEN => length = Some(matching(items, 65535)),
            FRAGMENT_BITS => fragment = Some(items.clone()),
            kind @ (PORT | DST_PORT | ICMP_TYPE | ICMP_CODE | TCP_FLAGS | DSCP | FLOW_LABEL) => {
                // A component that matches every value restricts nothing.
                let max = match kind {
                    PORT | DST_PORT => 65535,
                    ICMP_TYPE | ICMP_CODE => 255,
                    DSCP => 63,
                    FLOW_LABEL => 0xf_ffff,
                    _ => 0xfff,
                };
                let all = if kind == TCP_FLAGS {
                    (0..=max).all(|x| bitmask_matches(items, x))
                } else {
                    (0..=max).all(|x| numeric_matches(items, x))
                };
                if all {
                    continue;
                }
                let (reason, why) = match kind {
                    PORT => (Reason::Port, "a port that may be the source or the destination"),
                    DST_PORT => (Reason::DestinationPort, "destination ports"),
                    ICMP_TYPE | ICMP_CODE => (Reason::Icmp, "ICMP"),
                    TCP_FLAGS => (Reason::TcpFlags, "TCP flags"),
                    DSCP => (Reason::Dscp, "DSCP"),
                    _ => (Reason::FlowLabel, "flow labels"),
                };
                return refuse(reason, format!("{name}: ampguard does not match on {why}"));
            }
            kind => return refuse(Reason::UnknownComponent, format!("component type {kind} cannot be enforced")),
        }
    }
    let Some(victim) = victim else {
        return refuse(Reason::NoDestination, "no destination prefix: ampguard's policies are per victim");
    };
    let rule = action_rule(&route.actions)?;

    // Non-first fragments: the fragment vector, which the data plane applies
    // to every protocol's non-first fragments.
    if let Some(frag) = &fragment {
        let states: Vec<bool> = FRAG_STATES.iter().map(|(f, _)| bitmask_matches(frag, *f)).collect();
        if states.iter().all(|m| *m) {
            fragment = None; // matches every packet: no restriction
        } else {
            let non_first: Vec<bool> = FRAG_STATES.iter().map(|(_, nf)| *nf).collect();
            if states != non_first {
                return refuse(
                    Reason::Fragment,
                    "fragment: only \"non-first fragments\" (is-fragment and not first-fragment) can be enforced, as the fragment vector",
                );
            }
            if protocol.as_ref().is_some_and(|p| p.len() != 256) {
                return refuse(
                    Reason::Fragment,
                    "fragment with a protocol: the fragment vector holds non-first fragments of every protocol; leave the protocol out",
                );
            }
            if sport.as_ref().is_some_and(|s| s.len() != 65536) || length.is_some() {
                return refuse(Reason::Fragment, "fragment with ports or a packet length: non-first fragments carry neither");
            }
            let name = vectors.name_of(FRAGMENT).unwrap_or("fragment").to_string();
            return Ok(Mapped { victim, rules: BTreeMap::from([(name, rule)]) });
        }
    }
    let _ = fragment;

    match &protocol {
        Some(p) if p.as_slice() == [17] => {}
        Some(p) => return refuse(Reason::NotUdp, format!("protocol {}: ampguard acts on UDP (17) only", describe(p))),
        None => {
            return refuse(Reason::NotUdp, "no protocol: the route matches every protocol; ampguard acts on UDP only (add protocol udp)")
        }
    }
    let Some(ports) = sport else {
        return refuse(Reason::SourcePort, "no source port: ampguard acts on UDP from its vectors' source ports only");
    };
    let mut names = Vec::new();
    for v in vectors.all().iter().filter(|v| v.id != FRAGMENT) {
        let inside = v.ports.iter().filter(|p| ports.binary_search(&u64::from(**p)).is_ok()).count();
        if inside == 0 {
            continue;
        }
        if inside != v.ports.len() {
            let missing: Vec<u64> = v.ports.iter().map(|p| u64::from(*p)).filter(|p| ports.binary_search(p).is_err()).collect();
            return refuse(
                Reason::SourcePort,
                format!(
                    "source-port: vector {} also has port(s) {} the route does not name; ampguard cannot split a vector",
                    v.name,
                    describe(&missing)
                ),
            );
        }
        names.push(v.name.clone());
    }
    let covered: usize = vectors.all().iter().filter(|v| names.contains(&v.name)).map(|v| v.ports.len()).sum();
    if covered != ports.len() {
        let stray: Vec<u64> = ports.iter().copied().filter(|p| vectors.name_of_port(*p as u16).is_none()).collect();
        return refuse(
            Reason::SourcePort,
            format!("source-port {}: in no vector (the data plane only classifies vector ports)", describe(&stray)),
        );
    }
    let rule = match &length {
        None => rule,
        Some(lens) => size_rule(rule, lens, route.v6)?,
    };
    Ok(Mapped { victim, rules: names.into_iter().map(|n| (n, rule.clone())).collect() })
}

/// The rule the actions ask for: drop (traffic-rate 0) or a byte-rate limit.
fn action_rule(actions: &[Action]) -> Result<RuleSpec, Refusal> {
    let mut rule = None;
    for a in actions {
        match a {
            Action::TrafficRate { bytes_per_sec } => {
                let r = *bytes_per_sec;
                let spec = if r == 0.0 {
                    RuleSpec::simple(Verb::Drop)
                } else if !(r.is_finite() && r >= 1.0 && r.fract() == 0.0) {
                    return refuse(Reason::Rate, format!("traffic-rate {r} bytes/s: only whole bytes per second from 1 can be enforced"));
                } else {
                    let bps = (r as u64) * 8;
                    let spec = RuleSpec { bps: Some(bps), ..RuleSpec::simple(Verb::Limit) };
                    if let Err(e) = spec.resolve() {
                        return refuse(Reason::Rate, format!("traffic-rate {r} bytes/s: {e}"));
                    }
                    spec
                };
                if rule.as_ref().is_some_and(|old| *old != spec) {
                    return refuse(Reason::Rate, "two different traffic-rate actions");
                }
                rule = Some(spec);
            }
            Action::TrafficAction { sample: true, .. } => {
                return refuse(Reason::Sample, "traffic-action sample: ampguard does not sample on a route's behalf");
            }
            // Terminal or not: ampguard's routes never overlap (one rule per vector and victim).
            Action::TrafficAction { .. } => {}
            Action::Redirect(to) => return refuse(Reason::Redirect, format!("redirect to {to}: ampguard can only drop or rate-limit")),
            Action::Remark(dscp) => {
                return refuse(Reason::Remark, format!("traffic-marking DSCP {dscp}: ampguard can only drop or rate-limit"))
            }
            Action::Unknown(t) => {
                return refuse(Reason::UnknownAction, format!("Flowspec action community {t:#06x} is not one ampguard knows"))
            }
        }
    }
    rule.ok_or_else(|| Refusal {
        reason: Reason::NoAction,
        message: "no traffic-rate action (discard or rate-limit): the route asks for nothing ampguard enforces".into(),
    })
}

/// A packet-length condition as a payload-size range on the rule.
fn size_rule(rule: RuleSpec, lens: &[u64], v6: bool) -> Result<RuleSpec, Refusal> {
    let overhead = u64::from(if v6 { V6_OVERHEAD } else { V4_OVERHEAD });
    let (Some(&lo), Some(&hi)) = (lens.first(), lens.last()) else {
        return refuse(Reason::PacketLength, "packet-length matches no length");
    };
    if (hi - lo + 1) as usize != lens.len() {
        return refuse(Reason::PacketLength, format!("packet-length {}: only one range can be enforced", describe(lens)));
    }
    // Lengths below the headers hold no UDP packet: a range starting there starts at payload 0.
    let min = lo.saturating_sub(overhead);
    if hi < overhead {
        return refuse(Reason::PacketLength, format!("packet-length {}: shorter than the IP and UDP headers", describe(lens)));
    }
    let max = hi - overhead;
    let (min_bytes, max_bytes) = ((min > 0).then_some(min as u16), (max < 65535 - overhead).then_some(max as u16));
    if min_bytes.is_none() && max_bytes.is_none() {
        return Ok(rule);
    }
    let spec = RuleSpec { min_bytes, max_bytes, otherwise: Some(Verb::Pass), ..rule };
    if let Err(e) = spec.resolve() {
        return refuse(Reason::PacketLength, format!("packet-length: {e}"));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EQ: u8 = OP_EQ;
    const GE: u8 = OP_GT | OP_EQ;
    const LE: u8 = OP_LT | OP_EQ;

    fn it(op: u8, value: u64) -> Item {
        Item { op, value }
    }
    fn dst(p: &str) -> Component {
        Component::Prefix { kind: DST_PREFIX, prefix: p.parse().unwrap(), offset: 0 }
    }
    fn comp(kind: u8, items: &[Item]) -> Component {
        Component::Items { kind, items: items.to_vec() }
    }
    fn udp() -> Component {
        comp(PROTOCOL, &[it(0x80 | EQ, 17)])
    }
    fn sport(ports: &[u64]) -> Component {
        comp(SRC_PORT, &ports.iter().map(|p| it(EQ, *p)).collect::<Vec<_>>())
    }
    fn discard() -> Vec<Action> {
        vec![Action::TrafficRate { bytes_per_sec: 0.0 }]
    }
    fn route(components: Vec<Component>, actions: Vec<Action>) -> Route {
        Route { v6: false, components, actions }
    }
    fn map(r: &Route) -> Result<Mapped, Refusal> {
        map_route(r, &VectorTable::default())
    }
    fn reason(r: &Route) -> Reason {
        map(r).expect_err("refused").reason
    }
    fn drop() -> RuleSpec {
        RuleSpec::simple(Verb::Drop)
    }

    #[test]
    fn memcached_discard_is_a_drop_for_the_victim() {
        let r = route(vec![dst("203.0.113.10/32"), udp(), sport(&[11211])], discard());
        let m = map(&r).unwrap();
        assert_eq!(m.victim, "203.0.113.10/32".parse::<IpNet>().unwrap());
        assert_eq!(m.rules, BTreeMap::from([("memcached".to_string(), drop())]));
        assert_eq!(canonical(&r), "ipv4 destination 203.0.113.10/32 protocol ==17 source-port ==11211");
    }

    #[test]
    fn several_vectors_and_operators_that_come_down_to_their_ports() {
        // ntp 123 | ssdp 1900 | memcached 11211, written with ranges.
        let items = [it(EQ, 123), it(GE, 1900), it(OP_AND | LE, 1900), it(EQ, 11211)];
        let r = route(vec![dst("203.0.113.0/24"), udp(), comp(SRC_PORT, &items)], discard());
        let m = map(&r).unwrap();
        assert_eq!(m.rules.keys().cloned().collect::<Vec<_>>(), ["memcached", "ntp", "ssdp"]);
    }

    #[test]
    fn rate_limit_is_a_byte_limit() {
        let r = route(vec![dst("203.0.113.10/32"), udp(), sport(&[11211])], vec![Action::TrafficRate { bytes_per_sec: 12500.0 }]);
        let m = map(&r).unwrap();
        let rule = &m.rules["memcached"];
        assert_eq!(rule.action, Verb::Limit);
        assert_eq!(rule.bps, Some(100_000));
        assert_eq!(rule.pps, None);
        for bad in [0.5, 1.5, f32::NAN, f32::INFINITY, -3.0] {
            let r = route(vec![dst("203.0.113.10/32"), udp(), sport(&[11211])], vec![Action::TrafficRate { bytes_per_sec: bad }]);
            assert_eq!(reason(&r), Reason::Rate, "{bad}");
        }
    }

    #[test]
    fn packet_length_is_a_payload_size_range() {
        let at_least = comp(PACKET_LEN, &[it(GE, 1028)]);
        let m = map(&route(vec![dst("203.0.113.10/32"), udp(), sport(&[11211]), at_least.clone()], discard())).unwrap();
        let rule = &m.rules["memcached"];
        assert_eq!((rule.action, rule.min_bytes, rule.max_bytes, rule.otherwise), (Verb::Drop, Some(1000), None, Some(Verb::Pass)));
        // `>` 1027 is the same set.
        let m2 =
            map(&route(vec![dst("203.0.113.10/32"), udp(), sport(&[11211]), comp(PACKET_LEN, &[it(OP_GT, 1027)])], discard())).unwrap();
        assert_eq!(m, m2);
        // IPv6: the length excludes the fixed header.
        let r6 = Route { v6: true, components: vec![dst("2001:db8::10/128"), udp(), sport(&[11211]), at_least], actions: discard() };
        assert_eq!(map(&r6).unwrap().rules["memcached"].min_bytes, Some(1020));
        // A closed range.
        let range = comp(PACKET_LEN, &[it(GE, 128), it(OP_AND | LE, 1028)]);
        let rule = map(&route(vec![dst("203.0.113.10/32"), udp(), sport(&[123]), range], discard())).unwrap().rules["ntp"].clone();
        assert_eq!((rule.min_bytes, rule.max_bytes), (Some(100), Some(1000)));
        // Two ranges, or lengths that hold no UDP packet: refused.
        let two = comp(PACKET_LEN, &[it(LE, 100), it(GE, 1000)]);
        assert_eq!(reason(&route(vec![dst("203.0.113.10/32"), udp(), sport(&[123]), two], discard())), Reason::PacketLength);
        let tiny = comp(PACKET_LEN, &[it(OP_LT, 20)]);
        assert_eq!(reason(&route(vec![dst("203.0.113.10/32"), udp(), sport(&[123]), tiny], discard())), Reason::PacketLength);
    }

    #[test]
    fn non_first_fragments_are_the_fragment_vector() {
        // GoBGP's `fragment '=is-fragment&!first-fragment'`.
        let nf = comp(FRAGMENT_BITS, &[it(OP_MATCH, FRAG_ISF), it(0x80 | OP_AND | OP_NOT, FRAG_FF)]);
        let m = map(&route(vec![dst("203.0.113.10/32"), nf.clone()], discard())).unwrap();
        assert_eq!(m.rules, BTreeMap::from([("fragment".to_string(), drop())]));
        // is-fragment alone also matches first fragments (which carry ports).
        let isf = comp(FRAGMENT_BITS, &[it(OP_MATCH, FRAG_ISF)]);
        assert_eq!(reason(&route(vec![dst("203.0.113.10/32"), isf], discard())), Reason::Fragment);
        // With protocol udp: the vector would also take other protocols' fragments.
        assert_eq!(reason(&route(vec![dst("203.0.113.10/32"), udp(), nf.clone()], discard())), Reason::Fragment);
        assert_eq!(reason(&route(vec![dst("203.0.113.10/32"), nf, sport(&[11211])], discard())), Reason::Fragment);
    }

    #[test]
    fn each_refusal() {
        let base = || vec![dst("203.0.113.10/32"), udp(), sport(&[11211])];
        let with = |c: Component| {
            let mut v = base();
            v.push(c);
            route(v, discard())
        };
        let cases: Vec<(Route, Reason)> = vec![
            (route(vec![udp(), sport(&[11211])], discard()), Reason::NoDestination),
            (
                route(
                    vec![
                        Component::Prefix { kind: DST_PREFIX, prefix: "2001:db8::/64".parse().unwrap(), offset: 8 },
                        udp(),
                        sport(&[11211]),
                    ],
                    discard(),
                ),
                Reason::NoDestination,
            ),
            (with(Component::Prefix { kind: SRC_PREFIX, prefix: "198.51.100.0/24".parse().unwrap(), offset: 0 }), Reason::SourcePrefix),
            (route(vec![dst("203.0.113.10/32"), comp(PROTOCOL, &[it(EQ, 6)]), sport(&[11211])], discard()), Reason::NotUdp),
            (route(vec![dst("203.0.113.10/32"), comp(PROTOCOL, &[it(EQ, 17), it(EQ, 6)]), sport(&[11211])], discard()), Reason::NotUdp),
            (route(vec![dst("203.0.113.10/32"), sport(&[11211])], discard()), Reason::NotUdp),
            (route(vec![dst("203.0.113.10/32"), udp()], discard()), Reason::SourcePort),
            (route(vec![dst("203.0.113.10/32"), udp(), sport(&[11211, 4444])], discard()), Reason::SourcePort),
            // Every port but 53: most of them are in no vector.
            (route(vec![dst("203.0.113.10/32"), udp(), comp(SRC_PORT, &[it(OP_LT | OP_GT, 53)])], discard()), Reason::SourcePort),
            (with(comp(PORT, &[it(EQ, 80)])), Reason::Port),
            (with(comp(DST_PORT, &[it(EQ, 80)])), Reason::DestinationPort),
            (with(comp(ICMP_TYPE, &[it(EQ, 8)])), Reason::Icmp),
            (with(comp(ICMP_CODE, &[it(EQ, 0)])), Reason::Icmp),
            (with(comp(TCP_FLAGS, &[it(OP_MATCH, 0x02)])), Reason::TcpFlags),
            (with(comp(DSCP, &[it(EQ, 46)])), Reason::Dscp),
            (with(comp(FLOW_LABEL, &[it(EQ, 1)])), Reason::FlowLabel),
            (with(Component::Unknown { kind: 14 }), Reason::UnknownComponent),
            (with(comp(DST_PORT, &[it(0x80, 0)])), Reason::Operator),
            (with(comp(DST_PORT, &[it(0x87, 0)])), Reason::Operator),
            (route(base(), vec![]), Reason::NoAction),
            (route(base(), vec![Action::TrafficAction { terminal: true, sample: false }]), Reason::NoAction),
            (route(base(), vec![Action::TrafficRate { bytes_per_sec: 0.0 }, Action::TrafficRate { bytes_per_sec: 10.0 }]), Reason::Rate),
            (route(base(), vec![Action::TrafficRate { bytes_per_sec: 0.0 }, Action::Redirect("64512:10".into())]), Reason::Redirect),
            (route(base(), vec![Action::TrafficRate { bytes_per_sec: 0.0 }, Action::Remark(0)]), Reason::Remark),
            (route(base(), vec![Action::TrafficRate { bytes_per_sec: 0.0 }, Action::Unknown(0x800c)]), Reason::UnknownAction),
            (
                route(base(), vec![Action::TrafficRate { bytes_per_sec: 0.0 }, Action::TrafficAction { terminal: false, sample: true }]),
                Reason::Sample,
            ),
        ];
        for (r, want) in cases {
            let got = map(&r);
            assert_eq!(got.as_ref().map_err(|e| e.reason), Err(want), "{}: {got:?}", canonical(&r));
            assert!(!got.unwrap_err().message.is_empty());
        }
    }

    #[test]
    fn a_vector_is_named_whole_or_refused() {
        let cfg = [crate::config::VectorConfig { name: "game".into(), ports: vec![27015, 27016], amplification: None }];
        let vectors = VectorTable::new(&cfg).unwrap();
        let both = route(vec![dst("203.0.113.10/32"), udp(), comp(SRC_PORT, &[it(GE, 27015), it(OP_AND | LE, 27016)])], discard());
        assert_eq!(map_route(&both, &vectors).unwrap().rules.keys().collect::<Vec<_>>(), ["game"]);
        let one = route(vec![dst("203.0.113.10/32"), udp(), sport(&[27015])], discard());
        let e = map_route(&one, &vectors).unwrap_err();
        assert_eq!(e.reason, Reason::SourcePort);
        assert!(e.message.contains("27016"), "{}", e.message);
    }

    #[test]
    fn a_component_matching_everything_restricts_nothing() {
        // destination-port >= 0 (every port), and a /0 source: accepted.
        let r = route(
            vec![
                dst("203.0.113.10/32"),
                udp(),
                sport(&[11211]),
                comp(DST_PORT, &[it(GE, 0)]),
                Component::Prefix { kind: SRC_PREFIX, prefix: "0.0.0.0/0".parse().unwrap(), offset: 0 },
            ],
            discard(),
        );
        assert_eq!(map(&r).unwrap().rules.len(), 1);
    }

    #[test]
    fn a_terminal_action_beside_a_rate_is_fine() {
        let r = route(
            vec![dst("203.0.113.10/32"), udp(), sport(&[11211])],
            vec![Action::TrafficAction { terminal: true, sample: false }, Action::TrafficRate { bytes_per_sec: 0.0 }],
        );
        assert!(map(&r).is_ok());
    }

    #[test]
    fn operators() {
        let ne53 = [it(OP_LT | OP_GT, 53)];
        assert!(!numeric_matches(&ne53, 53) && numeric_matches(&ne53, 54));
        let range = [it(GE, 10), it(OP_AND | LE, 20), it(EQ, 30)];
        assert_eq!(matching(&range, 40), (10..=20).chain([30]).collect::<Vec<_>>());
        assert_eq!(describe(&matching(&range, 40)), "10-20, 30");
        // bitmask: not-match and match.
        assert!(bitmask_matches(&[it(OP_MATCH, 0x06)], 0x06) && !bitmask_matches(&[it(OP_MATCH, 0x06)], 0x02));
        assert!(bitmask_matches(&[it(0, 0x06)], 0x02));
        assert!(!bitmask_matches(&[it(OP_NOT, 0x06)], 0x02));
    }

    #[test]
    fn canonical_is_order_independent() {
        let a = route(vec![dst("203.0.113.10/32"), udp(), sport(&[11211])], discard());
        let b = route(vec![sport(&[11211]), dst("203.0.113.10/32"), udp()], discard());
        assert_eq!(canonical(&a), canonical(&b));
    }
}
