use super::*;
use crate::check::dns::FakeDns;

fn dns(txt: &[(&str, &str)]) -> FakeDns {
    let mut fake = FakeDns::default();
    for (name, record) in txt {
        fake.txt
            .entry(name.to_string())
            .or_default()
            .push(record.to_string());
    }
    fake
}

fn run(dns: &FakeDns, domain: &str, ip: &str) -> SpfOutcome {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(check(dns, domain, ip.parse().unwrap()))
}

#[test]
fn ip4_pass_fail_softfail_neutral() {
    let d = dns(&[
        ("a.test", "v=spf1 ip4:192.0.2.0/24 -all"),
        ("b.test", "v=spf1 ip4:192.0.2.1 ~all"),
        ("c.test", "v=spf1 ?all"),
        ("d.test", "v=spf1 ip6:2001:db8::/32 ip4:198.51.100.7"),
    ]);
    assert_eq!(run(&d, "a.test", "192.0.2.77").result, SpfResult::Pass);
    assert_eq!(run(&d, "a.test", "198.51.100.1").result, SpfResult::Fail);
    assert_eq!(run(&d, "b.test", "192.0.2.2").result, SpfResult::SoftFail);
    assert_eq!(run(&d, "c.test", "192.0.2.2").result, SpfResult::Neutral);
    assert_eq!(run(&d, "d.test", "2001:db8::5").result, SpfResult::Pass);
    assert_eq!(run(&d, "d.test", "198.51.100.8").result, SpfResult::Neutral);
    assert_eq!(run(&d, "none.test", "192.0.2.1").result, SpfResult::None);
}

#[test]
fn includes_redirects_and_errors() {
    let d = dns(&[
        ("top.test", "v=spf1 include:mid.test -all"),
        ("mid.test", "v=spf1 include:leaf.test ~all"),
        ("leaf.test", "v=spf1 ip4:203.0.113.9 -all"),
        ("loop.test", "v=spf1 include:loop.test -all"),
        ("red.test", "v=spf1 redirect=leaf.test"),
        ("two.test", "v=spf1 -all"),
        ("two.test", "v=spf1 +all"),
        ("bad.test", "v=spf1 foo:bar -all"),
        ("dangling.test", "v=spf1 include:nothing.test -all"),
    ]);
    let pass = run(&d, "top.test", "203.0.113.9");
    assert_eq!(pass.result, SpfResult::Pass);
    assert_eq!(pass.chain.len(), 3);
    assert_eq!(pass.chain[2].depth, 2);
    assert_eq!(run(&d, "top.test", "203.0.113.10").result, SpfResult::Fail);
    let looped = run(&d, "loop.test", "203.0.113.9");
    assert_eq!(looped.result, SpfResult::PermError);
    assert!(looped.reason.contains("loop"), "{}", looped.reason);
    assert_eq!(run(&d, "red.test", "203.0.113.9").result, SpfResult::Pass);
    assert_eq!(run(&d, "red.test", "203.0.113.1").result, SpfResult::Fail);
    assert_eq!(
        run(&d, "two.test", "203.0.113.9").result,
        SpfResult::PermError
    );
    assert_eq!(
        run(&d, "bad.test", "203.0.113.9").result,
        SpfResult::PermError
    );
    assert_eq!(
        run(&d, "dangling.test", "203.0.113.9").result,
        SpfResult::PermError
    );
}

#[test]
fn lookup_and_void_limits() {
    let mut records = vec![(
        "many.test".to_string(),
        format!(
            "v=spf1 {} -all",
            (1..=11)
                .map(|i| format!("include:i{i}.test"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    )];
    for i in 1..=11 {
        records.push((format!("i{i}.test"), "v=spf1 -all".to_string()));
    }
    let refs: Vec<(&str, &str)> = records
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let d = dns(&refs);
    let many = run(&d, "many.test", "192.0.2.1");
    assert_eq!(many.result, SpfResult::PermError);
    assert!(many.reason.contains("more than 10"), "{}", many.reason);

    let d = dns(&[("void.test", "v=spf1 a:x1.test a:x2.test a:x3.test -all")]);
    let void = run(&d, "void.test", "192.0.2.1");
    assert_eq!(void.result, SpfResult::PermError);
    assert!(void.reason.contains("found nothing"), "{}", void.reason);
}

#[test]
fn a_mx_exists_and_temperror() {
    let mut d = dns(&[
        ("a.test", "v=spf1 a/24 -all"),
        ("mx.test", "v=spf1 mx -all"),
        ("ex.test", "v=spf1 exists:%{ir}.ok.test -all"),
        ("t.test", "v=spf1 a:slow.test -all"),
    ]);
    d.addresses
        .insert("a.test".into(), vec!["192.0.2.10".parse().unwrap()]);
    d.mx.insert("mx.test".into(), vec![(10, "mail.mx.test".into())]);
    d.addresses.insert(
        "mail.mx.test".into(),
        vec!["198.51.100.25".parse().unwrap()],
    );
    d.addresses.insert(
        "5.2.0.192.ok.test".into(),
        vec!["127.0.0.2".parse().unwrap()],
    );
    d.broken.push("slow.test".into());
    assert_eq!(run(&d, "a.test", "192.0.2.200").result, SpfResult::Pass);
    assert_eq!(run(&d, "a.test", "192.0.3.1").result, SpfResult::Fail);
    assert_eq!(run(&d, "mx.test", "198.51.100.25").result, SpfResult::Pass);
    assert_eq!(run(&d, "mx.test", "198.51.100.26").result, SpfResult::Fail);
    assert_eq!(run(&d, "ex.test", "192.0.2.5").result, SpfResult::Pass);
    assert_eq!(run(&d, "t.test", "192.0.2.5").result, SpfResult::TempError);
}

#[test]
fn suggested_records() {
    let ip = "203.0.113.5".parse().unwrap();
    assert_eq!(
        suggested_record(None, ip, false).unwrap(),
        "v=spf1 ip4:203.0.113.5 include:spf.protection.outlook.com -all"
    );
    assert_eq!(
        suggested_record(Some("v=spf1 mx include:_spf.example ~all"), ip, false).unwrap(),
        "v=spf1 ip4:203.0.113.5 mx include:_spf.example include:spf.protection.outlook.com ~all"
    );
    assert_eq!(
        suggested_record(
            Some("v=spf1 ip4:203.0.113.5 include:spf.protection.outlook.com -all"),
            ip,
            true
        ),
        None
    );
    assert_eq!(
        suggested_record(Some("v=spf1 redirect=_spf.example"), ip, false).unwrap(),
        "v=spf1 ip4:203.0.113.5 include:spf.protection.outlook.com redirect=_spf.example"
    );
}
