//! The GoBGP gRPC client: reads the speaker's ipv4-flowspec and
//! ipv6-flowspec tables (a `ListPath` snapshot, then `WatchEvent` changes)
//! and its peers' session states, decodes each path into an RFC 8955
//! [`Route`], validates it against the unicast table (RFC 8955 section 6 /
//! RFC 9117), and hands [`Event`]s to the reconcile (sync.rs). Reconnects
//! with a backoff when the speaker goes away.

use std::{net::IpAddr, time::Duration};

use gobgp_api::{
    apipb::{self, family, gobgp_api_client::GobgpApiClient, watch_event_request, watch_event_response},
    prost_types::Any,
};
use gobgp_api::{prost::Message, tonic};
use ipnet::IpNet;
use tokio::sync::mpsc;

use super::{
    config::{FlowspecConfig, Validate},
    rfc8955::{self, Action, Component, Item, Reason, Refusal, Route},
};

/// One path of the speaker's Flowspec table, decoded.
#[derive(Clone, Debug)]
pub struct Received {
    /// The route's canonical NLRI text: the reconcile key.
    pub key: String,
    /// The BGP neighbor it came from ("local": the speaker's own RIB).
    pub peer: String,
    pub withdraw: bool,
    /// The route, or why it cannot even be read.
    pub route: Result<Route, Refusal>,
    /// The RFC 8955 section 6 check.
    pub valid: Result<(), Refusal>,
}

#[derive(Debug)]
pub enum Event {
    /// (Re)connected: the whole table, replacing what was known.
    Snapshot {
        routes: Vec<Received>,
        peers: Vec<(String, bool)>,
    },
    Path(Received),
    /// A peer's session went up (Established) or down.
    Peer {
        peer: String,
        up: bool,
    },
    /// The stream ended or the speaker cannot be reached.
    Lost(String),
}

type Client = GobgpApiClient<tonic::transport::Channel>;

const FLOWSPEC_FAMILIES: [(i32, bool); 2] = [(family::Afi::Ip as i32, false), (family::Afi::Ip6 as i32, true)];

fn fs_family(afi: i32) -> apipb::Family {
    apipb::Family { afi, safi: family::Safi::FlowSpecUnicast as i32 }
}

/// The speaker's name for a path's neighbor, as one string for each peer.
pub fn peer_name(neighbor: &str) -> String {
    match neighbor.parse::<IpAddr>() {
        Ok(a) if !a.is_unspecified() => a.to_canonical().to_string(),
        _ => "local".into(),
    }
}

/// Run until the daemon stops: connect, snapshot, watch; on any error say
/// so (`Event::Lost`) and try again after a pause.
pub async fn run(cfg: FlowspecConfig, tx: mpsc::Sender<Event>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(&cfg, &tx).await {
            Ok(()) => {
                let _ = tx.send(Event::Lost("the speaker closed the watch stream".into())).await;
            }
            Err(e) => {
                if tx.send(Event::Lost(e)).await.is_err() {
                    return;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(cfg: &FlowspecConfig, tx: &mpsc::Sender<Event>) -> Result<(), String> {
    let url = format!("http://{}", cfg.gobgp);
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| format!("cannot reach gobgpd at {}: {e}", cfg.gobgp))?;
    let mut client = Client::new(channel);
    // The watch first, then the snapshot: changes made in between are in
    // the stream, and replaying them over the snapshot converges.
    let req = apipb::WatchEventRequest {
        peer: Some(watch_event_request::Peer {}),
        table: Some(watch_event_request::Table {
            filters: vec![watch_event_request::table::Filter {
                r#type: watch_event_request::table::filter::Type::Best as i32,
                init: false,
            }],
        }),
    };
    let mut stream = client.watch_event(req).await.map_err(|e| format!("WatchEvent: {}", e.message()))?.into_inner();
    let mut routes = Vec::new();
    for (afi, _) in FLOWSPEC_FAMILIES {
        let req =
            apipb::ListPathRequest { table_type: apipb::TableType::Global as i32, family: Some(fs_family(afi)), ..Default::default() };
        let mut s = client.list_path(req).await.map_err(|e| format!("ListPath: {}", e.message()))?.into_inner();
        while let Some(d) = s.message().await.map_err(|e| format!("ListPath: {}", e.message()))? {
            for p in d.destination.map(|d| d.paths).unwrap_or_default() {
                if p.best {
                    routes.push(received(&mut client, cfg.validate, &p).await);
                }
            }
        }
    }
    let mut peers = Vec::new();
    let mut s = client.list_peer(apipb::ListPeerRequest::default()).await.map_err(|e| format!("ListPeer: {}", e.message()))?.into_inner();
    while let Some(r) = s.message().await.map_err(|e| format!("ListPeer: {}", e.message()))? {
        if let Some(p) = r.peer.as_ref().and_then(peer_state) {
            peers.push(p);
        }
    }
    tx.send(Event::Snapshot { routes, peers }).await.map_err(|_| "daemon stopping".to_string())?;
    while let Some(ev) = stream.message().await.map_err(|e| format!("watch stream: {}", e.message()))? {
        match ev.event {
            Some(watch_event_response::Event::Table(t)) => {
                for p in t.paths {
                    let r = received(&mut client, cfg.validate, &p).await;
                    tx.send(Event::Path(r)).await.map_err(|_| "daemon stopping".to_string())?;
                }
            }
            Some(watch_event_response::Event::Peer(pe)) => {
                if let Some((peer, up)) = pe.peer.as_ref().and_then(peer_state) {
                    tx.send(Event::Peer { peer, up }).await.map_err(|_| "daemon stopping".to_string())?;
                }
            }
            None => {}
        }
    }
    Ok(())
}

fn peer_state(p: &apipb::Peer) -> Option<(String, bool)> {
    let addr = p
        .conf
        .as_ref()
        .map(|c| c.neighbor_address.clone())
        .filter(|a| !a.is_empty())
        .or_else(|| p.state.as_ref().map(|s| s.neighbor_address.clone()))?;
    let up = p.state.as_ref().is_some_and(|s| s.session_state == apipb::peer_state::SessionState::Established as i32);
    Some((peer_name(&addr), up))
}

fn any_is(a: &Any, name: &str) -> bool {
    a.type_url.rsplit('/').next() == Some(name)
}

fn decode<M: Message + Default>(a: &Any) -> Result<M, Refusal> {
    M::decode(a.value.as_slice()).map_err(|e| Refusal { reason: Reason::Invalid, message: format!("cannot decode {}: {e}", a.type_url) })
}

/// Decode a path's NLRI and extended communities into a [`Route`].
pub fn decode_route(p: &apipb::Path) -> Result<Route, Refusal> {
    let v6 = p.family.as_ref().is_some_and(|f| f.afi == family::Afi::Ip6 as i32);
    let nlri = p.nlri.as_ref().ok_or_else(|| Refusal { reason: Reason::Invalid, message: "path without NLRI".into() })?;
    if !any_is(nlri, "apipb.FlowSpecNLRI") {
        return Err(Refusal { reason: Reason::Invalid, message: format!("not a Flowspec NLRI: {}", nlri.type_url) });
    }
    let nlri: apipb::FlowSpecNlri = decode(nlri)?;
    let mut components = Vec::new();
    for r in &nlri.rules {
        if any_is(r, "apipb.FlowSpecIPPrefix") {
            let pfx: apipb::FlowSpecIpPrefix = decode(r)?;
            let prefix = format!("{}/{}", pfx.prefix.split('/').next().unwrap_or(""), pfx.prefix_len);
            let prefix: IpNet =
                prefix.parse().map_err(|_| Refusal { reason: Reason::Invalid, message: format!("bad prefix {:?}", pfx.prefix) })?;
            components.push(Component::Prefix { kind: pfx.r#type as u8, prefix: prefix.trunc(), offset: pfx.offset as u8 });
        } else if any_is(r, "apipb.FlowSpecComponent") {
            let c: apipb::FlowSpecComponent = decode(r)?;
            let items = c.items.iter().map(|i| Item { op: i.op as u8, value: i.value }).collect();
            components.push(Component::Items { kind: c.r#type as u8, items });
        } else if any_is(r, "apipb.FlowSpecMAC") {
            let m: apipb::FlowSpecMac = decode(r)?;
            components.push(Component::Unknown { kind: m.r#type as u8 });
        } else {
            components.push(Component::Unknown { kind: 0 });
        }
    }
    let mut actions = Vec::new();
    for a in &p.pattrs {
        if !any_is(a, "apipb.ExtendedCommunitiesAttribute") {
            continue;
        }
        let ec: apipb::ExtendedCommunitiesAttribute = decode(a)?;
        for c in &ec.communities {
            let name = c.type_url.rsplit('/').next().unwrap_or("");
            let action = match name {
                "apipb.TrafficRateExtended" => Action::TrafficRate { bytes_per_sec: decode::<apipb::TrafficRateExtended>(c)?.rate },
                "apipb.TrafficActionExtended" => {
                    let t: apipb::TrafficActionExtended = decode(c)?;
                    Action::TrafficAction { terminal: t.terminal, sample: t.sample }
                }
                "apipb.RedirectTwoOctetAsSpecificExtended" => {
                    let r: apipb::RedirectTwoOctetAsSpecificExtended = decode(c)?;
                    Action::Redirect(format!("{}:{}", r.asn, r.local_admin))
                }
                "apipb.RedirectFourOctetAsSpecificExtended" => {
                    let r: apipb::RedirectFourOctetAsSpecificExtended = decode(c)?;
                    Action::Redirect(format!("{}:{}", r.asn, r.local_admin))
                }
                "apipb.RedirectIPv4AddressSpecificExtended" => {
                    let r: apipb::RedirectIPv4AddressSpecificExtended = decode(c)?;
                    Action::Redirect(format!("{}:{}", r.address, r.local_admin))
                }
                "apipb.RedirectIPv6AddressSpecificExtended" => {
                    let r: apipb::RedirectIPv6AddressSpecificExtended = decode(c)?;
                    Action::Redirect(format!("[{}]:{}", r.address, r.local_admin))
                }
                "apipb.TrafficRemarkExtended" => Action::Remark(decode::<apipb::TrafficRemarkExtended>(c)?.dscp),
                "apipb.UnknownExtended" => {
                    let u: apipb::UnknownExtended = decode(c)?;
                    // Types 0x80-0x82 are the Flowspec actions' (experimental transitive): one this code does not know.
                    if (0x80..=0x82).contains(&u.r#type) {
                        Action::Unknown(u.r#type << 8 | u32::from(u.value.first().copied().unwrap_or(0)))
                    } else {
                        continue;
                    }
                }
                // Route targets and other communities are not actions.
                _ => continue,
            };
            actions.push(action);
        }
    }
    Ok(Route { v6, components, actions })
}

/// What the originator check needs of a path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The AS_PATH's ASes in order (empty: originated inside this AS).
    pub as_path: Vec<u32>,
    /// ORIGINATOR_ID (set by route reflectors), else the neighbor's router id.
    pub originator: String,
    pub local: bool,
}

fn path_origin(p: &apipb::Path) -> Origin {
    let mut o = Origin { local: peer_name(&p.neighbor_ip) == "local", originator: p.source_id.clone(), ..Default::default() };
    for a in &p.pattrs {
        if any_is(a, "apipb.AsPathAttribute") {
            if let Ok(ap) = apipb::AsPathAttribute::decode(a.value.as_slice()) {
                o.as_path = ap.segments.iter().flat_map(|s| s.numbers.iter().copied()).collect();
            }
        } else if any_is(a, "apipb.OriginatorIdAttribute") {
            if let Ok(id) = apipb::OriginatorIdAttribute::decode(a.value.as_slice()) {
                o.originator = id.id;
            }
        }
    }
    o
}

/// RFC 8955 section 6 as RFC 9117 revises it, given the flow route's origin
/// and the unicast routes covering its destination (`best`: the longest
/// prefix holding it) and inside it (`more_specific`).
pub fn check_origin(mode: Validate, flow: &Origin, best: Option<&Origin>, more_specific: &[Origin]) -> Result<(), Refusal> {
    let bad = |m: String| Err(Refusal { reason: Reason::Validation, message: m });
    if mode == Validate::Off || flow.local {
        return Ok(());
    }
    let ibgp = flow.as_path.is_empty();
    if ibgp && mode == Validate::Rfc9117 {
        // RFC 9117 section 4.1: originated within the AS (or passed on by a
        // route reflector), the originator check is not applied.
        return Ok(());
    }
    let Some(best) = best else {
        return bad("no unicast route for the destination: the originator cannot be checked (RFC 8955 section 6)".into());
    };
    if ibgp {
        if best.originator != flow.originator {
            return bad(format!(
                "originator {} differs from the best unicast route's ({}) (RFC 8955 section 6, validate = \"rfc8955\")",
                flow.originator, best.originator
            ));
        }
        return Ok(());
    }
    let neighbor_as = flow.as_path[0];
    if best.as_path.first() != Some(&neighbor_as) {
        return bad(format!(
            "learned from AS {neighbor_as}, but the best unicast route for the destination is from AS {} (RFC 8955 section 6 a)",
            best.as_path.first().map_or("(this AS)".to_string(), |a| a.to_string())
        ));
    }
    if let Some(o) = more_specific.iter().find(|o| o.as_path.first().is_some_and(|a| *a != neighbor_as)) {
        return bad(format!(
            "a more-specific unicast route is from AS {} (RFC 8955 section 6 b)",
            o.as_path.first().copied().unwrap_or_default()
        ));
    }
    Ok(())
}

async fn unicast(
    client: &mut Client,
    v6: bool,
    prefix: &str,
    kind: apipb::table_lookup_prefix::Type,
) -> Result<Vec<(IpNet, Origin)>, String> {
    let afi = if v6 { family::Afi::Ip6 } else { family::Afi::Ip } as i32;
    let req = apipb::ListPathRequest {
        table_type: apipb::TableType::Global as i32,
        family: Some(apipb::Family { afi, safi: family::Safi::Unicast as i32 }),
        prefixes: vec![apipb::TableLookupPrefix { prefix: prefix.into(), r#type: kind as i32 }],
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut s = client.list_path(req).await.map_err(|e| e.message().to_string())?.into_inner();
    while let Some(d) = s.message().await.map_err(|e| e.message().to_string())? {
        let Some(d) = d.destination else { continue };
        let Ok(net) = d.prefix.parse::<IpNet>() else { continue };
        if let Some(p) = d.paths.iter().find(|p| p.best) {
            out.push((net, path_origin(p)));
        }
    }
    Ok(out)
}

async fn validate(client: &mut Client, mode: Validate, p: &apipb::Path, route: &Route) -> Result<(), Refusal> {
    let flow = path_origin(p);
    if mode == Validate::Off || flow.local || (mode == Validate::Rfc9117 && flow.as_path.is_empty()) {
        return check_origin(mode, &flow, None, &[]);
    }
    let Some(dst) = route.components.iter().find_map(|c| match c {
        Component::Prefix { kind: rfc8955::DST_PREFIX, prefix, .. } => Some(*prefix),
        _ => None,
    }) else {
        return Ok(()); // refused by the mapping anyway
    };
    let lookup_err = |e: String| Refusal { reason: Reason::Validation, message: format!("cannot read the unicast table to validate: {e}") };
    let covering = unicast(client, route.v6, &dst.to_string(), apipb::table_lookup_prefix::Type::Shorter).await.map_err(lookup_err)?;
    let longer = unicast(client, route.v6, &dst.to_string(), apipb::table_lookup_prefix::Type::Longer).await.map_err(lookup_err)?;
    let best = covering.iter().filter(|(n, _)| n.contains(&dst)).max_by_key(|(n, _)| n.prefix_len()).map(|(_, o)| o);
    let more: Vec<Origin> = longer.into_iter().filter(|(n, _)| n.prefix_len() > dst.prefix_len()).map(|(_, o)| o).collect();
    check_origin(mode, &flow, best, &more)
}

async fn received(client: &mut Client, mode: Validate, p: &apipb::Path) -> Received {
    let route = decode_route(p);
    let key = match &route {
        Ok(r) => rfc8955::canonical(r),
        Err(_) => format!(
            "undecodable {}",
            p.nlri.as_ref().map(|n| n.value.iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap_or_default()
        ),
    };
    let valid = match (&route, p.is_withdraw) {
        (Ok(r), false) => validate(client, mode, p, r).await,
        _ => Ok(()),
    };
    Received { key, peer: peer_name(&p.neighbor_ip), withdraw: p.is_withdraw, route, valid }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(as_path: &[u32], originator: &str) -> Origin {
        Origin { as_path: as_path.to_vec(), originator: originator.into(), local: false }
    }

    #[test]
    fn originator_checks() {
        let ibgp = o(&[], "192.0.2.1");
        // RFC 9117 (default): iBGP routes pass without a unicast route.
        assert!(check_origin(Validate::Rfc9117, &ibgp, None, &[]).is_ok());
        // RFC 8955 as first written: the unicast route must exist and match.
        assert_eq!(check_origin(Validate::Rfc8955, &ibgp, None, &[]).unwrap_err().reason, Reason::Validation);
        assert!(check_origin(Validate::Rfc8955, &ibgp, Some(&o(&[], "192.0.2.1")), &[]).is_ok());
        assert!(check_origin(Validate::Rfc8955, &ibgp, Some(&o(&[], "192.0.2.9")), &[]).is_err());
        // eBGP: the neighbor AS must be the best unicast route's.
        let ebgp = o(&[64500, 64501], "198.51.100.1");
        assert!(check_origin(Validate::Rfc9117, &ebgp, None, &[]).is_err());
        assert!(check_origin(Validate::Rfc9117, &ebgp, Some(&o(&[64500], "x")), &[]).is_ok());
        assert!(check_origin(Validate::Rfc9117, &ebgp, Some(&o(&[64999], "x")), &[]).is_err());
        // (b): a more-specific from another neighbor AS.
        let e = check_origin(Validate::Rfc9117, &ebgp, Some(&o(&[64500], "x")), &[o(&[64999], "y")]).unwrap_err();
        assert!(e.message.contains("more-specific"), "{}", e.message);
        // Off, and the speaker's own routes, pass.
        assert!(check_origin(Validate::Off, &ebgp, None, &[]).is_ok());
        assert!(check_origin(Validate::Rfc8955, &Origin { local: true, ..ibgp }, None, &[]).is_ok());
    }

    #[test]
    fn peers() {
        assert_eq!(peer_name("192.0.2.1"), "192.0.2.1");
        assert_eq!(peer_name("<nil>"), "local");
        assert_eq!(peer_name(""), "local");
        assert_eq!(peer_name("0.0.0.0"), "local");
        assert_eq!(peer_name("::ffff:192.0.2.1"), "192.0.2.1");
    }

    #[test]
    fn decodes_a_gobgp_path() {
        let any = |name: &str, m: Vec<u8>| Any { type_url: format!("type.googleapis.com/apipb.{name}"), value: m };
        let nlri = apipb::FlowSpecNlri {
            rules: vec![
                any(
                    "FlowSpecIPPrefix",
                    apipb::FlowSpecIpPrefix { r#type: 1, prefix_len: 32, prefix: "203.0.113.10".into(), offset: 0 }.encode_to_vec(),
                ),
                any(
                    "FlowSpecComponent",
                    apipb::FlowSpecComponent { r#type: 3, items: vec![apipb::FlowSpecComponentItem { op: 0x81, value: 17 }] }
                        .encode_to_vec(),
                ),
                any(
                    "FlowSpecComponent",
                    apipb::FlowSpecComponent { r#type: 6, items: vec![apipb::FlowSpecComponentItem { op: 0x91, value: 11211 }] }
                        .encode_to_vec(),
                ),
            ],
        };
        let ec = apipb::ExtendedCommunitiesAttribute {
            communities: vec![
                any("TrafficRateExtended", apipb::TrafficRateExtended { asn: 0, rate: 0.0 }.encode_to_vec()),
                any("TwoOctetAsSpecificExtended", vec![]),
            ],
        };
        let p = apipb::Path {
            nlri: Some(any("FlowSpecNLRI", nlri.encode_to_vec())),
            pattrs: vec![any("ExtendedCommunitiesAttribute", ec.encode_to_vec())],
            family: Some(fs_family(family::Afi::Ip as i32)),
            ..Default::default()
        };
        let r = decode_route(&p).unwrap();
        assert_eq!(rfc8955::canonical(&r), "ipv4 destination 203.0.113.10/32 protocol ==17 source-port ==11211");
        assert_eq!(r.actions, vec![Action::TrafficRate { bytes_per_sec: 0.0 }]);
        let m = rfc8955::map_route(&r, &crate::vectors::VectorTable::default()).unwrap();
        assert_eq!(m.rules.keys().collect::<Vec<_>>(), ["memcached"]);
    }
}
