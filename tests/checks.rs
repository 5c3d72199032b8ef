//! `smarthost check`: the real resolver against a small authoritative DNS server on 127.0.0.1
//! (a UDP responder answering from a table), and certificates made with rcgen.

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, MX, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;

type Zone = HashMap<(String, RecordType), Vec<RData>>;

/// Serves `zone` on a random UDP port of 127.0.0.1 until the process ends.
fn serve(zone: Zone) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let mut reply = Message::new();
            reply.set_id(query.id());
            reply.set_message_type(MessageType::Response);
            reply.set_op_code(query.op_code());
            reply.set_recursion_desired(query.recursion_desired());
            reply.set_recursion_available(true);
            reply.set_authoritative(true);
            if let Some(q) = query.queries().first() {
                reply.add_query(q.clone());
                let name = q
                    .name()
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                match zone.get(&(name.clone(), q.query_type())) {
                    Some(data) => {
                        for d in data {
                            reply.add_answer(Record::from_rdata(q.name().clone(), 60, d.clone()));
                        }
                    }
                    None if zone.keys().any(|(n, _)| *n == name) => {}
                    None => {
                        reply.set_response_code(ResponseCode::NXDomain);
                    }
                }
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), peer);
        }
    });
    address
}

fn zone() -> Zone {
    let mut zone = Zone::new();
    let mut txt = |name: &str, text: &str| {
        zone.entry((name.to_string(), RecordType::TXT))
            .or_default()
            .push(RData::TXT(TXT::new(vec![text.to_string()])));
    };
    txt("pass.test", "v=spf1 ip4:192.0.2.0/24 -all");
    txt("soft.test", "v=spf1 ip4:192.0.2.1 ~all");
    txt("chain.test", "v=spf1 include:one.test -all");
    txt("one.test", "v=spf1 include:two.test ~all");
    txt("two.test", "v=spf1 ip4:203.0.113.9 -all");
    txt("loop.test", "v=spf1 include:loop2.test -all");
    txt("loop2.test", "v=spf1 include:loop.test -all");
    txt("redirect.test", "v=spf1 redirect=two.test");
    txt("mx.test", "v=spf1 mx/30 -all");
    txt("nospf.test", "google-site-verification=abc");
    let includes: Vec<String> = (1..=11).map(|i| format!("include:n{i}.test")).collect();
    txt(
        "eleven.test",
        &format!("v=spf1 {} -all", includes.join(" ")),
    );
    for i in 1..=11 {
        txt(&format!("n{i}.test"), "v=spf1 -all");
    }
    txt(
        "2.0.0.127.zen.spamhaus.org",
        "Listed by SBL, see https://check.spamhaus.org/",
    );
    zone.insert(
        ("mx.test".into(), RecordType::MX),
        vec![RData::MX(MX::new(
            10,
            Name::from_ascii("mail.mx.test.").unwrap(),
        ))],
    );
    zone.insert(
        ("mail.mx.test".into(), RecordType::A),
        vec![RData::A(A::new(198, 51, 100, 24))],
    );
    zone.insert(
        ("2.0.0.127.zen.spamhaus.org".into(), RecordType::A),
        vec![RData::A(A::new(127, 0, 0, 2))],
    );
    zone.insert(
        ("contoso.com".into(), RecordType::MX),
        vec![RData::MX(MX::new(
            0,
            Name::from_ascii("contoso-com.mail.protection.outlook.com.").unwrap(),
        ))],
    );
    zone.insert(
        ("fabrikam.test".into(), RecordType::MX),
        vec![RData::MX(MX::new(
            10,
            Name::from_ascii("mx.fabrikam.test.").unwrap(),
        ))],
    );
    zone
}

fn smarthost(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn spf_dnsbl_mx_against_a_local_server() {
    let server = serve(zone()).to_string();
    let spf = |domain: &str, ip: &str| {
        smarthost(&["check", "spf", domain, "--ip", ip, "--dns-server", &server])
    };
    let cases = [
        ("pass.test", "192.0.2.8", 0, "pass"),
        ("pass.test", "198.51.100.1", 1, "fail"),
        ("soft.test", "192.0.2.2", 1, "softfail"),
        ("chain.test", "203.0.113.9", 0, "pass"),
        ("chain.test", "203.0.113.8", 1, "fail"),
        ("loop.test", "203.0.113.9", 1, "permerror"),
        ("eleven.test", "203.0.113.9", 1, "permerror"),
        ("redirect.test", "203.0.113.9", 0, "pass"),
        ("mx.test", "198.51.100.26", 0, "pass"),
        ("mx.test", "198.51.100.30", 1, "fail"),
        ("nospf.test", "192.0.2.1", 1, "none"),
        ("missing.test", "192.0.2.1", 1, "none"),
    ];
    for (domain, ip, code, result) in cases {
        let (status, text) = spf(domain, ip);
        let first = text.lines().next().unwrap_or_default().to_string();
        assert!(
            first.ends_with(&format!(": {result}")),
            "{domain} {ip}: {text}"
        );
        assert_eq!(status, code, "{domain} {ip}: {text}");
    }
    let (_, text) = spf("chain.test", "203.0.113.9");
    assert!(
        text.contains("      two.test: v=spf1 ip4:203.0.113.9 -all"),
        "{text}"
    );
    let (_, text) = spf("missing.test", "192.0.2.1");
    assert!(
        text.contains("v=spf1 ip4:192.0.2.1 include:spf.protection.outlook.com -all"),
        "{text}"
    );
    let (_, text) = spf("pass.test", "198.51.100.1");
    assert!(
        text.contains(
            "v=spf1 ip4:198.51.100.1 ip4:192.0.2.0/24 include:spf.protection.outlook.com -all"
        ),
        "{text}"
    );

    let (status, text) = smarthost(&[
        "check",
        "dnsbl",
        "127.0.0.2",
        "--list",
        "zen.spamhaus.org",
        "--dns-server",
        &server,
    ]);
    assert_eq!(status, 1, "{text}");
    assert!(text.contains("LISTED") && text.contains("SBL:"), "{text}");
    assert!(text.contains("Listed by SBL"), "{text}");
    assert!(text.contains("sender.office.com"), "{text}");
    let (status, text) = smarthost(&["check", "dnsbl", "192.0.2.1", "--dns-server", &server]);
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("zen.spamhaus.org: not listed"), "{text}");
    assert!(text.contains("bl.spamcop.net: not listed"), "{text}");

    let (status, text) = smarthost(&["check", "mx", "contoso.com", "--dns-server", &server]);
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("Microsoft 365: yes"), "{text}");
    assert!(
        text.contains("endpoint: contoso-com.mail.protection.outlook.com:25"),
        "{text}"
    );
    assert!(text.contains("It equals"), "{text}");
    let (status, text) = smarthost(&["check", "mx", "fabrikam.test", "--dns-server", &server]);
    assert_eq!(status, 1, "{text}");
    assert!(text.contains("mx.fabrikam.test"), "{text}");
}

fn write_cert(dir: &std::path::Path, name: &str, sans: &[&str], expired: bool) -> String {
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, sans[0]);
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    } else {
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2090, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, cert.pem()).unwrap();
    path.to_string_lossy().to_string()
}

#[test]
fn certificates_for_a_connector() {
    let dir = tempfile::tempdir().unwrap();
    let exact = write_cert(
        dir.path(),
        "exact.pem",
        &["relay.contoso.com", "contoso.com"],
        false,
    );
    let wild = write_cert(dir.path(), "wild.pem", &["*.contoso.com"], false);
    let other = write_cert(dir.path(), "other.pem", &["fabrikam.com"], false);
    let old = write_cert(dir.path(), "old.pem", &["contoso.com"], true);
    let check = |file: &str| smarthost(&["check", "cert", file, "--domain", "contoso.com"]);

    let (status, text) = check(&exact);
    assert_eq!(status, 0, "{text}");
    assert!(
        text.contains("DNS:contoso.com") && text.contains("days left"),
        "{text}"
    );
    assert!(
        text.contains("EC 256 bits") && text.contains("self-signed"),
        "{text}"
    );
    let (status, text) = check(&wild);
    assert_eq!(status, 0, "{text}");
    let (status, text) = check(&other);
    assert_eq!(status, 1, "{text}");
    assert!(text.contains("match none"), "{text}");
    let (status, text) = check(&old);
    assert_eq!(status, 1, "{text}");
    assert!(text.contains("expired"), "{text}");
    let (status, _) = smarthost(&["check", "cert", "/nonexistent.pem"]);
    assert_eq!(status, 2);
}
