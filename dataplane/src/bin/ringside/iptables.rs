//! `ringside iptables`: the rules that steer a pod's TCP traffic through ringside, set up,
//! printed (`--dry-run`) or removed (`--clean`). ringside shells out to `iptables`,
//! `ip6tables` and `ip`; everything it installs lives in its own chains (`RINGSIDE_*`), hung
//! from the built-in chains by one jump each, plus one policy-routing rule and route table in
//! tproxy mode. A run first removes whatever a previous run installed (found in
//! `iptables-save`, `ip rule`), so running it twice leaves the same rules, and switching modes
//! leaves no trace of the other one.
//!
//! The two modes (see docs/sidecar.md for the full picture):
//! - `tproxy`: mangle table only. Inbound SYNs to local addresses are TPROXYed to the inbound
//!   port; the app's outbound packets get [`INTERCEPT_MARK`] in mangle OUTPUT, policy routing
//!   (`fwmark INTERCEPT_MARK → table ROUTE_TABLE: local default dev lo`) loops them back in
//!   through `lo`, where TPROXY hands them to the outbound port. raw-table `CT --notrack`
//!   keeps every TCP flow out of conntrack; no nat table.
//! - `redirect`: nat table REDIRECT to the inbound and outbound ports; the original
//!   destination comes from conntrack (SO_ORIGINAL_DST).
//!
//! Both exclude the proxy: packets carrying the proxy's socket mark (`runtime.socket_mark`)
//! first, then the proxy's uid. The mark matters because packets the kernel sends for the
//! proxy's connections from no socket of the proxy (RSTs and TIME_WAIT ACKs from the
//! namespace's control socket; SYN-ACKs of connections not accepted yet, on kernels before 4.4)
//! are not matched by `--uid-owner`, while the socket's mark is on them.

use std::net::IpAddr;
use std::process::Command;

/// The mark mangle OUTPUT puts on the app's outbound packets (tproxy mode) and TPROXY puts on
/// the packets it steers; `ip rule fwmark INTERCEPT_MARK` routes them to the local table.
pub const INTERCEPT_MARK: u32 = 0x1;
/// The route table of `local default dev lo` (tproxy mode). Istio uses the same number.
pub const ROUTE_TABLE: u32 = 133;
/// Ports of the proxy itself that are never intercepted inbound: admin, health, Prometheus
/// (besides the inbound and outbound ports).
pub const PROXY_PORTS: [u16; 3] = [15000, 15021, 15090];
/// The chain prefix: every chain ringside creates starts with it.
pub const CHAIN_PREFIX: &str = "RINGSIDE_";
/// iptables `multiport` takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Tproxy,
    Redirect,
}

/// Which inbound ports are intercepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    All,
    List(Vec<u16>),
}

#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    pub inbound_ports: Ports,
    pub exclude_inbound_ports: Vec<u16>,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: Option<u32>,
    pub proxy_mark: u32,
    pub exclude_cidrs: Vec<Cidr>,
    /// Also install the IPv6 rules (ip6tables, `ip -6`).
    pub ipv6: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `80,8080`, `*` (every port) or empty (none).
pub fn parse_ports(s: &str, allow_all: bool) -> Result<Ports, String> {
    let s = s.trim();
    if s == "*" {
        return if allow_all {
            Ok(Ports::All)
        } else {
            Err("`*` is not allowed here".into())
        };
    }
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u16>() {
            Ok(p) if p > 0 => {
                if !out.contains(&p) {
                    out.push(p)
                }
            }
            _ => return Err(format!("{part:?} is not a port (1..=65535)")),
        }
    }
    Ok(Ports::List(out))
}

/// `10.0.0.0/8,fd00::/8` (a bare address is a /32 or /128).
pub fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, p) = match part.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (part, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{part:?}: {a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{part:?}: prefix must be 0..={max}")),
            },
        };
        out.push(Cidr { addr, prefix });
    }
    Ok(out)
}

impl Options {
    pub fn check(&self) -> Result<(), String> {
        if self.inbound_port == 0 || self.outbound_port == 0 {
            return Err("--inbound-port and --outbound-port must be 1..=65535".into());
        }
        if self.inbound_port == self.outbound_port {
            return Err("--inbound-port and --outbound-port must differ".into());
        }
        if self.proxy_mark == 0 {
            return Err("--proxy-mark must not be 0 (0 is no mark)".into());
        }
        if self.proxy_mark == INTERCEPT_MARK {
            return Err(format!(
                "--proxy-mark {INTERCEPT_MARK} is the mark ringside gives intercepted packets; \
                 pick another"
            ));
        }
        if let Ports::List(l) = &self.inbound_ports {
            for p in l {
                if self.never_inbound().contains(p) {
                    return Err(format!(
                        "--inbound-ports: {p} is one of the proxy's own ports or excluded"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Inbound ports never intercepted: the proxy's own and the excluded ones.
    fn never_inbound(&self) -> Vec<u16> {
        let mut v = vec![self.inbound_port, self.outbound_port];
        v.extend(PROXY_PORTS);
        for p in &self.exclude_inbound_ports {
            if !v.contains(p) {
                v.push(*p);
            }
        }
        v
    }
}

/// One command to run (or print).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd(pub Vec<String>);

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|a| shell_quote(a)).collect();
        f.write_str(&parts.join(" "))
    }
}

fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=+@%".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    fn ip(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
    fn any(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }
    fn has(self, a: IpAddr) -> bool {
        matches!(
            (self, a),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

fn families(ipv6: bool) -> Vec<Family> {
    if ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

fn ipt(f: Family, table: &str, args: &[&str]) -> Cmd {
    let mut v = vec![
        f.iptables().to_string(),
        "-w".into(),
        "-t".into(),
        table.into(),
    ];
    v.extend(args.iter().map(|s| s.to_string()));
    Cmd(v)
}

fn ipt_rule(f: Family, table: &str, chain: &str, spec: &[String]) -> Cmd {
    let mut v = vec![
        f.iptables().to_string(),
        "-w".into(),
        "-t".into(),
        table.into(),
        "-A".into(),
        chain.into(),
    ];
    v.extend(spec.iter().cloned());
    Cmd(v)
}

fn s(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

fn port_chunks(ports: &[u16]) -> Vec<String> {
    ports
        .chunks(MULTIPORT_MAX)
        .map(|c| c.iter().map(u16::to_string).collect::<Vec<_>>().join(","))
        .collect()
}

/// The commands that install the rules (after [`clean_commands`] removed the old ones).
pub fn setup_commands(o: &Options) -> Vec<Cmd> {
    let rules = Rules::new(o);
    let mut out = Vec::new();
    for f in families(o.ipv6) {
        let exempt = proxy_exempt(o, f);
        match o.mode {
            Mode::Tproxy => {
                rules.tproxy_notrack(f, &mut out);
                rules.tproxy_prerouting(f, &mut out);
                rules.tproxy_output(f, &exempt, &mut out);
                rules.tproxy_route(f, &mut out);
            }
            Mode::Redirect => {
                rules.redirect_inbound(f, &mut out);
                rules.redirect_output(f, &exempt, &mut out);
            }
        }
    }
    out
}

/// The rule specs that exempt packets from interception, in order: the proxy's own packets
/// (its mark, which covers SYN-ACKs of connections not accepted yet, then its uid), then local
/// destinations and excluded networks.
fn proxy_exempt(o: &Options, f: Family) -> Vec<Vec<String>> {
    let mark = o.proxy_mark.to_string();
    let mut exempt = vec![s(&["-m", "mark", "--mark", &mark, "-j", "RETURN"])];
    if let Some(uid) = o.proxy_uid {
        let uid = uid.to_string();
        exempt.push(s(&["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]));
    }
    exempt.push(s(&[
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "RETURN",
    ]));
    for c in o.exclude_cidrs.iter().filter(|c| f.has(c.addr)) {
        exempt.push(s(&["-d", &c.to_string(), "-j", "RETURN"]));
    }
    exempt
}

/// Creates chain `ch` of table `t`, starting with the rules `first`.
fn new_chain(f: Family, t: &str, ch: &str, first: &[Vec<String>], out: &mut Vec<Cmd>) {
    out.push(ipt(f, t, &["-N", ch]));
    for r in first {
        out.push(ipt_rule(f, t, ch, r));
    }
}

/// What every rule of one set-up needs, formatted once.
struct Rules<'a> {
    o: &'a Options,
    /// The intercept mark, as iptables takes it.
    imark: String,
    /// Ports never intercepted, in `multiport` chunks.
    never: Vec<String>,
    inbound_port: String,
    outbound_port: String,
}

impl Rules<'_> {
    fn new(o: &Options) -> Rules<'_> {
        Rules {
            o,
            imark: format!("{INTERCEPT_MARK:#x}"),
            never: port_chunks(&o.never_inbound()),
            inbound_port: o.inbound_port.to_string(),
            outbound_port: o.outbound_port.to_string(),
        }
    }

    /// `-p tcp -m multiport --<dir> ports -j RETURN` for each chunk of `chunks`.
    fn return_ports(
        f: Family,
        t: &str,
        ch: &str,
        dir: &str,
        chunks: &[String],
        out: &mut Vec<Cmd>,
    ) {
        for ports in chunks {
            let spec = s(&["-p", "tcp", "-m", "multiport", dir, ports, "-j", "RETURN"]);
            out.push(ipt_rule(f, t, ch, &spec));
        }
    }

    /// tproxy: no conntrack entries for TCP (nothing in tproxy mode needs them).
    fn tproxy_notrack(&self, f: Family, out: &mut Vec<Cmd>) {
        let (t, ch) = ("raw", "RINGSIDE_NOTRACK");
        out.push(ipt(f, t, &["-N", ch]));
        out.push(ipt_rule(
            f,
            t,
            ch,
            &s(&["-p", "tcp", "-j", "CT", "--notrack"]),
        ));
        out.push(ipt(f, t, &["-A", "PREROUTING", "-j", ch]));
        out.push(ipt(f, t, &["-A", "OUTPUT", "-j", ch]));
    }

    /// tproxy: the app's outbound packets (looped back through lo) to the outbound port, the
    /// inbound SYNs to the inbound port.
    fn tproxy_prerouting(&self, f: Family, out: &mut Vec<Cmd>) {
        let (t, ch, imark) = ("mangle", "RINGSIDE_PREROUTING", self.imark.as_str());
        out.push(ipt(f, t, &["-N", ch]));
        // The app's outbound packets, looped back through lo by policy routing.
        let outbound = s(&[
            "-i",
            "lo",
            "-p",
            "tcp",
            "-m",
            "mark",
            "--mark",
            imark,
            "-j",
            "TPROXY",
            "--on-port",
            &self.outbound_port,
            "--tproxy-mark",
            imark,
        ]);
        out.push(ipt_rule(f, t, ch, &outbound));
        out.push(ipt_rule(f, t, ch, &s(&["-i", "lo", "-j", "RETURN"])));
        Self::return_ports(f, t, ch, "--dports", &self.never, out);
        // Inbound: only the SYN needs steering (its destination is local, so the rest of the
        // connection finds the accepted socket by its addresses); replies to the proxy's own
        // upstream connections are never SYNs.
        let tproxy_in = s(&[
            "-j",
            "TPROXY",
            "--on-port",
            &self.inbound_port,
            "--tproxy-mark",
            imark,
        ]);
        let syn_local = s(&[
            "-p",
            "tcp",
            "--syn",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
        ]);
        match &self.o.inbound_ports {
            Ports::All => out.push(ipt_rule(f, t, ch, &[syn_local, tproxy_in].concat())),
            Ports::List(l) => {
                for ports in port_chunks(l) {
                    let m = s(&["-m", "multiport", "--dports", &ports]);
                    let spec = [syn_local.clone(), m, tproxy_in.clone()].concat();
                    out.push(ipt_rule(f, t, ch, &spec));
                }
            }
        }
        out.push(ipt(f, t, &["-A", "PREROUTING", "-j", ch]));
    }

    /// tproxy: the app's outbound packets get the intercept mark (policy routing then loops
    /// them back), except the exempt ones and replies of inbound connections not intercepted.
    fn tproxy_output(&self, f: Family, exempt: &[Vec<String>], out: &mut Vec<Cmd>) {
        let (t, ch) = ("mangle", "RINGSIDE_OUTPUT");
        new_chain(f, t, ch, exempt, out);
        // Replies of inbound connections that are not intercepted.
        let excluded = port_chunks(&self.o.exclude_inbound_ports);
        Self::return_ports(f, t, ch, "--sports", &excluded, out);
        let mark = s(&["-p", "tcp", "-j", "MARK", "--set-mark", &self.imark]);
        out.push(ipt_rule(f, t, ch, &mark));
        out.push(ipt(f, t, &["-A", "OUTPUT", "-j", ch]));
    }

    /// tproxy: marked packets are delivered locally (to the TPROXY sockets).
    fn tproxy_route(&self, f: Family, out: &mut Vec<Cmd>) {
        let table = ROUTE_TABLE.to_string();
        let imark = self.imark.as_str();
        out.push(Cmd(s(&[
            "ip",
            f.ip(),
            "rule",
            "add",
            "fwmark",
            imark,
            "lookup",
            &table,
        ])));
        let local = [
            "ip",
            f.ip(),
            "route",
            "add",
            "local",
            f.any(),
            "dev",
            "lo",
            "table",
            &table,
        ];
        out.push(Cmd(s(&local)));
    }

    /// redirect: inbound connections to the inbound port, except the ports never intercepted.
    fn redirect_inbound(&self, f: Family, out: &mut Vec<Cmd>) {
        let (t, ch) = ("nat", "RINGSIDE_INBOUND");
        out.push(ipt(f, t, &["-N", ch]));
        Self::return_ports(f, t, ch, "--dports", &self.never, out);
        let redirect_in = s(&["-j", "REDIRECT", "--to-ports", &self.inbound_port]);
        match &self.o.inbound_ports {
            Ports::All => out.push(ipt_rule(
                f,
                t,
                ch,
                &[s(&["-p", "tcp"]), redirect_in].concat(),
            )),
            Ports::List(l) => {
                for ports in port_chunks(l) {
                    let m = s(&["-p", "tcp", "-m", "multiport", "--dports", &ports]);
                    out.push(ipt_rule(f, t, ch, &[m, redirect_in.clone()].concat()));
                }
            }
        }
        out.push(ipt(f, t, &["-A", "PREROUTING", "-j", ch]));
    }

    /// redirect: the app's outbound connections to the outbound port, except the exempt ones.
    fn redirect_output(&self, f: Family, exempt: &[Vec<String>], out: &mut Vec<Cmd>) {
        let (t, ch) = ("nat", "RINGSIDE_OUTPUT");
        new_chain(f, t, ch, exempt, out);
        let redirect = s(&[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &self.outbound_port,
        ]);
        out.push(ipt_rule(f, t, ch, &redirect));
        out.push(ipt(f, t, &["-A", "OUTPUT", "-j", ch]));
    }
}

/// What a previous run left, read from `iptables-save` / `ip6tables-save` and `ip rule`: the
/// commands that remove it (jumps into RINGSIDE_* chains, the chains, the policy route).
pub fn clean_commands(ipv6: bool) -> Result<Vec<Cmd>, String> {
    let mut out = Vec::new();
    for f in families(ipv6) {
        let saved = capture(&[f.save()])?;
        out.extend(clean_from_save(f, &saved));
        let table = ROUTE_TABLE.to_string();
        let rules = capture(&["ip", f.ip(), "rule", "show"])?;
        let ours = format!("fwmark {:#x} lookup {table}", INTERCEPT_MARK);
        for _ in rules.lines().filter(|l| l.contains(&ours)) {
            out.push(Cmd(s(&[
                "ip",
                f.ip(),
                "rule",
                "del",
                "fwmark",
                &format!("{INTERCEPT_MARK:#x}"),
                "lookup",
                &table,
            ])));
        }
        let routes = capture(&["ip", f.ip(), "route", "show", "table", &table]).unwrap_or_default();
        if !routes.trim().is_empty() {
            out.push(Cmd(s(&["ip", f.ip(), "route", "flush", "table", &table])));
        }
    }
    Ok(out)
}

fn clean_from_save(f: Family, saved: &str) -> Vec<Cmd> {
    let mut deletes = Vec::new();
    let mut chains = Vec::new();
    let mut table = String::new();
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(c) = line.strip_prefix(':') {
            let name = c.split_whitespace().next().unwrap_or("");
            if name.starts_with(CHAIN_PREFIX) {
                chains.push((table.clone(), name.to_string()));
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let words = split_words(rule);
            let chain = words.first().map(String::as_str).unwrap_or("");
            let jumps_ours = words
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with(CHAIN_PREFIX));
            if !chain.starts_with(CHAIN_PREFIX) && jumps_ours {
                let mut v = vec![
                    f.iptables().to_string(),
                    "-w".into(),
                    "-t".into(),
                    table.clone(),
                    "-D".into(),
                ];
                v.extend(words);
                deletes.push(Cmd(v));
            }
        }
    }
    let mut out = deletes;
    for (t, c) in &chains {
        out.push(ipt(f, t, &["-F", c]));
    }
    for (t, c) in &chains {
        out.push(ipt(f, t, &["-X", c]));
    }
    out
}

/// Splits an iptables-save rule into words; "double quoted" words (comments) keep their spaces.
fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn capture(argv: &[&str]) -> Result<String, String> {
    let o = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if !o.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            argv.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn run(cmd: &Cmd) -> Result<(), String> {
    let o = Command::new(&cmd.0[0])
        .args(&cmd.0[1..])
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd}: {} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// `ringside iptables`: removes what a previous run installed, then (unless `clean`) installs
/// the rules of `o`. With `dry_run`, prints the commands and runs none.
pub fn apply(o: &Options, clean: bool, dry_run: bool) -> Result<(), String> {
    o.check()?;
    let mut cmds = clean_commands(o.ipv6)?;
    if !clean {
        cmds.extend(setup_commands(o));
    }
    for c in &cmds {
        if dry_run {
            println!("{c}");
        } else {
            run(c)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: Mode) -> Options {
        Options {
            mode,
            inbound_ports: Ports::All,
            exclude_inbound_ports: vec![22],
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: Some(1337),
            proxy_mark: 1337,
            exclude_cidrs: parse_cidrs("10.0.0.0/8,fd00::/8").unwrap(),
            ipv6: true,
        }
    }

    #[test]
    fn tproxy_uses_mangle_and_raw_only() {
        let cmds = setup_commands(&opts(Mode::Tproxy));
        let text: Vec<String> = cmds.iter().map(|c| c.to_string()).collect();
        assert!(text.iter().all(|c| !c.contains("-t nat")));
        assert!(text.iter().any(|c| c.contains("TPROXY --on-port 15006")));
        assert!(text.iter().any(|c| c.contains("TPROXY --on-port 15001")));
        assert!(text
            .iter()
            .any(|c| c == "ip -4 rule add fwmark 0x1 lookup 133"));
        // The mark rule comes before the MARK in RINGSIDE_OUTPUT.
        let first_out = text
            .iter()
            .position(|c| c.contains("-A RINGSIDE_OUTPUT"))
            .unwrap();
        assert!(text[first_out].contains("--mark 1337 -j RETURN"));
        assert!(text
            .iter()
            .any(|c| c.contains("ip6tables") && c.contains("fd00::/8")));
        assert!(!text
            .iter()
            .any(|c| c.starts_with("iptables ") && c.contains("fd00::/8")));
    }

    #[test]
    fn redirect_uses_nat() {
        let text: Vec<String> = setup_commands(&opts(Mode::Redirect))
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert!(text.iter().all(|c| c.contains("-t nat")));
        assert!(text.iter().any(|c| c.contains("REDIRECT --to-ports 15001")));
    }

    #[test]
    fn clean_finds_jumps_and_chains() {
        let saved = "*mangle\n:PREROUTING ACCEPT [0:0]\n:RINGSIDE_OUTPUT - [0:0]\n\
                     -A OUTPUT -j RINGSIDE_OUTPUT\n-A OUTPUT -m comment --comment \"a b\" -j ACCEPT\n\
                     -A RINGSIDE_OUTPUT -p tcp -j MARK --set-xmark 0x1/0xffffffff\nCOMMIT\n";
        let c: Vec<String> = clean_from_save(Family::V4, saved)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            c,
            vec![
                "iptables -w -t mangle -D OUTPUT -j RINGSIDE_OUTPUT",
                "iptables -w -t mangle -F RINGSIDE_OUTPUT",
                "iptables -w -t mangle -X RINGSIDE_OUTPUT",
            ]
        );
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_ports("*", true).unwrap(), Ports::All);
        assert!(parse_ports("*", false).is_err());
        assert_eq!(
            parse_ports("80, 8080,80", true).unwrap(),
            Ports::List(vec![80, 8080])
        );
        assert!(parse_ports("0", true).is_err());
        assert!(parse_cidrs("10.0.0.0/33").is_err());
        assert_eq!(parse_cidrs("::1").unwrap()[0].prefix, 128);
    }
}
