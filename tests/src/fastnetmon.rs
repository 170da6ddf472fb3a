//! Debian's FastNetMon in the lab: its configuration, shared by the
//! observability test and the bench's reaction-time part.

use std::path::Path;

/// FastNetMon's configuration for the lab's edge namespace (shared/docs/FASTNETMON.md):
/// capture on edge0, `networks_list` and `networks_whitelist` in `dir`, a ban over
/// 1,000 pps checked every second, the notify script `notify`, nothing phoned home.
pub fn conf(dir: &Path, notify: &Path, ban_time: u32) -> String {
    format!(
        "\
logging_level = info
logging_local_syslog_logging = off
logging_remote_syslog_logging = off
# Never phone home.
disable_usage_report = on
enable_ban = on
enable_ban_ipv6 = on
process_incoming_traffic = on
process_outgoing_traffic = off
ban_details_records_count = 20
ban_time = {ban_time}
unban_only_if_attack_finished = off
networks_list_path = {dir}/networks_list
white_list_path = {dir}/networks_whitelist
check_period = 1
enable_connection_tracking = off
ban_for_pps = on
ban_for_bandwidth = off
ban_for_flows = off
threshold_pps = 1000
threshold_mbps = 100000
threshold_flows = 100000
mirror_afpacket = on
mirror_afxdp = off
mirror_af_packet_custom_sampling_rate = 1
mirror_af_packet_fanout_mode = cpu
pcap = off
netflow = off
sflow = off
interfaces = edge0
average_calculation_time = 5
speed_calculation_delay = 1
notify_script_path = {notify}
notify_script_pass_details = on
collect_attack_pcap_dumps = off
redis_enabled = off
mongodb_enabled = off
exabgp = off
gobgp = off
influxdb = off
graphite = off
kafka_traffic_export = off
monitor_local_ip_addresses = off
monitor_openvz_vps_ip_addresses = off
pid_path = {dir}/fastnetmon.pid
cli_stats_file_path = {dir}/fastnetmon.dat
cli_stats_ipv6_file_path = {dir}/fastnetmon_ipv6.dat
# gRPC API (127.0.0.1:50052) and metrics stay on the edge namespace's loopback.
enable_api = on
prometheus = on
prometheus_port = 9209
prometheus_host = 127.0.0.1
",
        dir = dir.display(),
        notify = notify.display()
    )
}
