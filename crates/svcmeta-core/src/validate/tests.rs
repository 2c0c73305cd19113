//! Validation tests: a table of bad inputs, each with the exact violations (field and message)
//! it must produce, plus the accepted edge cases (de-duplication, byte counting, durations) and
//! the formatting of `ValidationErrors`.

use super::*;

/// A draft that passes every standard rule; cases start from it and break one thing.
fn good() -> InstanceDraft {
    InstanceDraft {
        id: "web-1".into(),
        service: "web".into(),
        address: "10.0.0.1".into(),
        port: 8080,
        ..InstanceDraft::default()
    }
}

fn with(change: impl FnOnce(&mut InstanceDraft)) -> InstanceDraft {
    let mut draft = good();
    change(&mut draft);
    draft
}

/// `n` distinct tags `t0`, `t1`, …
fn n_tags(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i}")).collect()
}

/// `n` distinct meta keys `k0`, `k1`, … each with value `v`.
fn meta_keys(n: usize) -> BTreeMap<String, String> {
    (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()
}

/// Validates `draft` and compares the violations, in order, with `expected`
/// (`(field, message)` pairs); an empty `expected` means the draft must be accepted.
fn check_with(limits: &Limits, name: &str, draft: InstanceDraft, expected: &[(&str, &str)]) {
    let got: Vec<(String, String)> = match validate(draft, limits) {
        Ok(_) => Vec::new(),
        Err(errors) => {
            assert!(
                !errors.violations.is_empty(),
                "{name}: an error must hold violations"
            );
            errors
                .violations
                .into_iter()
                .map(|v| (v.field, v.message))
                .collect()
        }
    };
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(field, message)| (field.to_string(), message.to_string()))
        .collect();
    assert_eq!(got, expected, "case {name}");
}

fn check(name: &str, draft: InstanceDraft, expected: &[(&str, &str)]) {
    check_with(&Limits::standard(), name, draft, expected);
}

/// Validates a draft that must be accepted and returns its fields.
fn accepted(limits: &Limits, draft: InstanceDraft) -> InstanceFields {
    match validate(draft, limits) {
        Ok(registration) => registration.fields().clone(),
        Err(errors) => panic!("rejected: {errors}"),
    }
}

#[test]
fn the_baseline_draft_is_accepted_unchanged() {
    let fields = accepted(&Limits::standard(), good());
    assert_eq!(fields.id, "web-1");
    assert_eq!(fields.service(), "web");
    assert_eq!(fields.address, "10.0.0.1");
    assert_eq!(fields.port, 8080);
    assert!(fields.tags.is_empty() && fields.meta.is_empty());
    assert_eq!(
        (fields.version, fields.environment, fields.region),
        (None, None, None)
    );
    assert_eq!(fields.ttl_ms, None);
}

#[test]
fn ids_and_service_names() {
    check(
        "empty id",
        with(|d| d.id.clear()),
        &[("id", "required, must be 1 to 128 bytes")],
    );
    check(
        "id with a space",
        with(|d| d.id = "web 1".into()),
        &[(
            "id",
            "character ' ' at byte 3 is not allowed, use [A-Za-z0-9._:-]",
        )],
    );
    check(
        "id with a slash",
        with(|d| d.id = "web/1".into()),
        &[(
            "id",
            "character '/' at byte 3 is not allowed, use [A-Za-z0-9._:-]",
        )],
    );
    check(
        "id with a non-ASCII letter",
        with(|d| d.id = "caf\u{e9}-1".into()),
        &[(
            "id",
            "character '\u{e9}' at byte 3 is not allowed, use [A-Za-z0-9._:-]",
        )],
    );
    check(
        "id with a control character",
        with(|d| d.id = "a\nb".into()),
        &[(
            "id",
            "control character U+000A at byte 1 is not allowed, use [A-Za-z0-9._:-]",
        )],
    );
    check(
        "129-byte id",
        with(|d| d.id = "a".repeat(129)),
        &[("id", "129 bytes, limit 128")],
    );
    check("128-byte id", with(|d| d.id = "a".repeat(128)), &[]);
    check(
        "id with every allowed punctuation",
        with(|d| d.id = "node-1.web_a:8080".into()),
        &[],
    );
    check(
        "empty service",
        with(|d| d.service.clear()),
        &[("service", "required, must be 1 to 128 bytes")],
    );
    check(
        "service with a colon",
        with(|d| d.service = "web:api".into()),
        &[(
            "service",
            "character ':' at byte 3 is not allowed, use [A-Za-z0-9._-]",
        )],
    );
    check(
        "129-byte service",
        with(|d| d.service = "s".repeat(129)),
        &[("service", "129 bytes, limit 128")],
    );
    check(
        "mixed-case service",
        with(|d| d.service = "Web.API_v2-x".into()),
        &[],
    );
}

#[test]
fn tag_rules() {
    check(
        "65 distinct tags",
        with(|d| d.tags = n_tags(65)),
        &[("tags", "65 distinct tags, limit 64")],
    );
    check("64 distinct tags", with(|d| d.tags = n_tags(64)), &[]);

    // 65 tags that de-duplicate to 64 are accepted: limits count after de-duplication.
    let mut sixty_five = n_tags(64);
    sixty_five.push("t17".into());
    let fields = accepted(&Limits::standard(), with(|d| d.tags = sixty_five));
    assert_eq!(fields.tags().collect::<Vec<_>>(), n_tags(64));

    let mut long = n_tags(3);
    long.push("x".repeat(129));
    check(
        "129-byte tag",
        with(|d| d.tags = long),
        &[("tags[3]", "129 bytes, limit 128")],
    );
    check(
        "empty tag",
        with(|d| d.tags = vec!["a".into(), String::new(), "b".into()]),
        &[("tags[1]", "empty, must be 1 to 128 bytes")],
    );
    check(
        "tag with a control character",
        with(|d| d.tags = vec!["ok".into(), "be\u{7}ll".into()]),
        &[(
            "tags[1]",
            "control character U+0007 at byte 2 is not allowed",
        )],
    );
    check(
        "tag with a tab",
        with(|d| d.tags = vec!["a\tb".into()]),
        &[(
            "tags[0]",
            "control character U+0009 at byte 1 is not allowed",
        )],
    );
    // Tags are opaque: separators and spaces are fine.
    check(
        "opaque tag",
        with(|d| d.tags = vec!["a,b=c:d/e.f g".into(), "\u{e9}t\u{e9}".into()]),
        &[],
    );
}

#[test]
fn duplicate_tags_are_removed_keeping_the_first_order() {
    let draft = with(|d| d.tags = ["b", "a", "b", "c", "a", "B"].map(String::from).to_vec());
    let fields = accepted(&Limits::standard(), draft);
    assert_eq!(fields.tags().collect::<Vec<_>>(), ["b", "a", "c", "B"]);
}

#[test]
fn meta() {
    check(
        "600-byte meta value",
        with(|d| {
            d.meta.insert("k".into(), "v".repeat(600));
        }),
        &[("meta.k", "value is 600 bytes, limit 512")],
    );
    check(
        "512-byte meta value",
        with(|d| {
            d.meta.insert("k".into(), "v".repeat(512));
        }),
        &[],
    );
    check(
        "meta key with a space",
        with(|d| {
            d.meta.insert("a b".into(), "v".into());
        }),
        &[(
            "meta.a b",
            "character ' ' at byte 1 is not allowed in a key, use [A-Za-z0-9_.-]",
        )],
    );
    check(
        "meta key with a colon",
        with(|d| {
            d.meta.insert("team:x".into(), "v".into());
        }),
        &[(
            "meta.team:x",
            "character ':' at byte 4 is not allowed in a key, use [A-Za-z0-9_.-]",
        )],
    );
    check(
        "empty meta key",
        with(|d| {
            d.meta.insert(String::new(), "v".into());
        }),
        &[("meta", "empty key, keys must be 1 to 128 bytes")],
    );
    check(
        "129-byte meta key",
        with(|d| {
            d.meta.insert("k".repeat(129), "v".into());
        }),
        &[(
            &format!("meta.{}", "k".repeat(129)),
            "key is 129 bytes, limit 128",
        )],
    );
    check(
        "meta value with a newline",
        with(|d| {
            d.meta.insert("k".into(), "a\nb".into());
        }),
        &[(
            "meta.k",
            "control character U+000A at byte 1 is not allowed in a value",
        )],
    );
    check(
        "65 meta keys",
        with(|d| d.meta = meta_keys(65)),
        &[("meta", "65 keys, limit 64")],
    );
    check("64 meta keys", with(|d| d.meta = meta_keys(64)), &[]);
    // A dotted key, an empty value, a tab and opaque separators are all accepted.
    check(
        "dotted key, empty and opaque values",
        with(|d| {
            d.meta.insert("user.name".into(), "a,b=c d/e".into());
            d.meta.insert("empty".into(), String::new());
            d.meta.insert("tabbed".into(), "a\tb".into());
        }),
        &[],
    );
}

#[test]
fn ports() {
    check(
        "port 70000",
        with(|d| d.port = 70_000),
        &[("port", "70000 is out of range 0 to 65535")],
    );
    check(
        "port -1",
        with(|d| d.port = -1),
        &[("port", "-1 is out of range 0 to 65535")],
    );
    check("port 0", with(|d| d.port = 0), &[]);
    check("port 65535", with(|d| d.port = 65_535), &[]);
    check(
        "port 65536",
        with(|d| d.port = 65_536),
        &[("port", "65536 is out of range 0 to 65535")],
    );
}

#[test]
fn environments_and_regions() {
    check(
        "upper-case environment",
        with(|d| d.environment = Some("Prod".into())),
        &[(
            "environment",
            "\"Prod\" must start with a lower-case letter or digit",
        )],
    );
    check(
        "upper case after the first character",
        with(|d| d.environment = Some("pRod".into())),
        &[(
            "environment",
            "character 'R' at byte 1 is not allowed, use a lower-case slug [a-z0-9._-]",
        )],
    );
    check(
        "environment with a space",
        with(|d| d.environment = Some("eu west".into())),
        &[(
            "environment",
            "character ' ' at byte 2 is not allowed, use a lower-case slug [a-z0-9._-]",
        )],
    );
    check(
        "65-byte environment",
        with(|d| d.environment = Some("e".repeat(65))),
        &[("environment", "65 bytes, limit 64")],
    );
    check(
        "64-byte environment",
        with(|d| d.environment = Some("e".repeat(64))),
        &[],
    );
    check(
        "empty environment",
        with(|d| d.environment = Some(String::new())),
        &[("environment", "empty; omit the field instead")],
    );
    check(
        "region starting with a dash",
        with(|d| d.region = Some("-eu".into())),
        &[(
            "region",
            "\"-eu\" must start with a lower-case letter or digit",
        )],
    );
    check(
        "slugs",
        with(|d| {
            d.environment = Some("prod-2".into());
            d.region = Some("eu-west-1.a_b".into());
        }),
        &[],
    );

    let mut pinned = Limits::standard();
    pinned.regions = Some(vec!["eu-west".into(), "us-east".into()]);
    pinned.environments = Some(vec!["prod".into()]);
    check_with(
        &pinned,
        "region outside the allowed list",
        with(|d| d.region = Some("ap-south".into())),
        &[(
            "region",
            "\"ap-south\" is not one of the allowed values: eu-west, us-east",
        )],
    );
    check_with(
        &pinned,
        "environment outside the allowed list, and upper case",
        with(|d| d.environment = Some("Prod".into())),
        &[
            (
                "environment",
                "\"Prod\" must start with a lower-case letter or digit",
            ),
            (
                "environment",
                "\"Prod\" is not one of the allowed values: prod",
            ),
        ],
    );
    check_with(
        &pinned,
        "allowed values",
        with(|d| {
            d.region = Some("us-east".into());
            d.environment = Some("prod".into());
        }),
        &[],
    );
    // An allowed list does not make the field required.
    check_with(&pinned, "absent pinned fields", good(), &[]);
}

#[test]
fn required_fields_come_from_the_limits() {
    let mut limits = Limits::standard();
    limits.required = vec![
        RequiredField::Version,
        RequiredField::Environment,
        RequiredField::Region,
        RequiredField::Address,
        RequiredField::Port,
    ];
    check_with(
        &limits,
        "every optional field required and missing",
        with(|d| {
            d.address.clear();
            d.port = 0;
        }),
        &[
            ("version", "required by the configuration"),
            ("environment", "required by the configuration"),
            ("region", "required by the configuration"),
            ("address", "required by the configuration"),
            ("port", "required by the configuration"),
        ],
    );
    check_with(
        &limits,
        "every required field present",
        with(|d| {
            d.version = Some("1.2.3".into());
            d.environment = Some("prod".into());
            d.region = Some("eu".into());
        }),
        &[],
    );
    // A present but empty version is not "missing"; it is reported as empty.
    check_with(
        &limits,
        "required version given empty",
        with(|d| {
            d.version = Some(String::new());
            d.environment = Some("prod".into());
            d.region = Some("eu".into());
        }),
        &[("version", "empty; omit the field instead")],
    );
    for (text, field) in [
        ("address", RequiredField::Address),
        ("port", RequiredField::Port),
        ("version", RequiredField::Version),
        ("environment", RequiredField::Environment),
        ("env", RequiredField::Environment),
        ("region", RequiredField::Region),
    ] {
        assert_eq!(RequiredField::parse(text), Some(field), "{text}");
    }
    assert_eq!(RequiredField::parse("tags"), None);
    assert_eq!(RequiredField::parse("Version"), None);
}

#[test]
fn versions() {
    let mut semver = Limits::standard();
    semver.version_format = VersionFormat::Semver;
    check_with(
        &semver,
        "banana under Semver",
        with(|d| d.version = Some("banana".into())),
        &[(
            "version",
            "\"banana\" is not a semantic version (like 1.4.2 or v2)",
        )],
    );
    for ok in ["v2", "1.4", "1.4.2", "2.0.0-rc.1+build.5", "V3.1"] {
        check_with(&semver, ok, with(|d| d.version = Some(ok.to_string())), &[]);
    }
    // Without the Semver rule an opaque version is fine.
    check(
        "opaque version",
        with(|d| d.version = Some("banana".into())),
        &[],
    );
    check(
        "version with a space",
        with(|d| d.version = Some("1.0 beta".into())),
        &[("version", "character ' ' at byte 3 is not allowed")],
    );
    check(
        "129-byte version",
        with(|d| d.version = Some("9".repeat(129))),
        &[("version", "129 bytes, limit 128")],
    );
    check(
        "empty version",
        with(|d| d.version = Some(String::new())),
        &[("version", "empty; omit the field instead")],
    );
}

#[test]
fn ttls() {
    check(
        "ttl 0s",
        with(|d| d.ttl = Some("0s".into())),
        &[("ttl", "0s is shorter than the minimum of 1ms")],
    );
    check(
        "ttl 1ns",
        with(|d| d.ttl = Some("1ns".into())),
        &[("ttl", "1ns is shorter than the minimum of 1ms")],
    );
    check(
        "ttl abc",
        with(|d| d.ttl = Some("abc".into())),
        &[("ttl", "invalid duration \"abc\"")],
    );
    check(
        "ttl without a unit",
        with(|d| d.ttl = Some("30".into())),
        &[("ttl", "missing unit in duration \"30\"")],
    );
    check(
        "ttl with an unknown unit",
        with(|d| d.ttl = Some("3d".into())),
        &[("ttl", "unknown unit \"d\" in duration \"3d\"")],
    );
    check(
        "ttl over a week",
        with(|d| d.ttl = Some("169h".into())),
        &[("ttl", "169h is longer than the limit of 168h")],
    );
    let ttl =
        |text: &str| accepted(&Limits::standard(), with(|d| d.ttl = Some(text.into()))).ttl_ms;
    assert_eq!(ttl("30s"), Some(30_000));
    assert_eq!(ttl("1m30s"), Some(90_000));
    assert_eq!(ttl("1500ms"), Some(1_500));
    assert_eq!(ttl("1.5s"), Some(1_500));
    assert_eq!(ttl("168h"), Some(168 * 3_600_000));
    assert_eq!(
        accepted(&Limits::standard(), good()).ttl_ms,
        None,
        "no ttl means no lease"
    );
}

#[test]
fn addresses() {
    for ok in [
        "",
        "db.internal",
        "10.0.0.1",
        "[::1]",
        "fe80::1%eth0",
        "my_host-1",
    ] {
        check(ok, with(|d| d.address = ok.into()), &[]);
    }
    check(
        "address with a slash",
        with(|d| d.address = "http://x".into()),
        &[(
            "address",
            "character '/' at byte 5 is not allowed in a host name or IP",
        )],
    );
    check(
        "256-byte address",
        with(|d| d.address = "a".repeat(256)),
        &[("address", "256 bytes, limit 255")],
    );
}

#[test]
fn every_violation_is_reported_at_once_in_field_order() {
    let draft = InstanceDraft {
        id: String::new(),
        service: "web:api".into(),
        address: "a b".into(),
        port: 70_000,
        tags: vec!["ok".into(), String::new(), "x".repeat(130)],
        version: Some(String::new()),
        environment: Some("Prod".into()),
        region: Some("eu west".into()),
        meta: [("k".to_string(), "v".repeat(600))].into_iter().collect(),
        ttl: Some("30".into()),
    };
    check(
        "everything wrong",
        draft,
        &[
            ("id", "required, must be 1 to 128 bytes"),
            (
                "service",
                "character ':' at byte 3 is not allowed, use [A-Za-z0-9._-]",
            ),
            (
                "address",
                "character ' ' at byte 1 is not allowed in a host name or IP",
            ),
            ("port", "70000 is out of range 0 to 65535"),
            ("tags[1]", "empty, must be 1 to 128 bytes"),
            ("tags[2]", "130 bytes, limit 128"),
            ("version", "empty; omit the field instead"),
            (
                "environment",
                "\"Prod\" must start with a lower-case letter or digit",
            ),
            (
                "region",
                "character ' ' at byte 2 is not allowed, use a lower-case slug [a-z0-9._-]",
            ),
            ("meta.k", "value is 600 bytes, limit 512"),
            ("ttl", "missing unit in duration \"30\""),
        ],
    );
    // One field can break several rules; each is reported.
    check(
        "long id with a bad character",
        with(|d| d.id = format!("{}/", "a".repeat(128))),
        &[
            ("id", "129 bytes, limit 128"),
            (
                "id",
                "character '/' at byte 128 is not allowed, use [A-Za-z0-9._:-]",
            ),
        ],
    );
}

#[test]
fn limits_count_utf8_bytes_not_characters() {
    // 43 three-byte characters: 43 characters, 129 bytes.
    let euro43 = "\u{20ac}".repeat(43);
    assert_eq!((euro43.chars().count(), euro43.len()), (43, 129));
    check(
        "43 three-byte characters",
        with(|d| d.tags = vec![euro43.clone()]),
        &[("tags[0]", "129 bytes, limit 128")],
    );
    check(
        "42 three-byte characters",
        with(|d| d.tags = vec!["\u{20ac}".repeat(42)]),
        &[],
    );
    // 257 two-byte characters: 514 bytes of value.
    check(
        "meta value of two-byte characters",
        with(|d| {
            d.meta.insert("k".into(), "\u{e9}".repeat(257));
        }),
        &[("meta.k", "value is 514 bytes, limit 512")],
    );
    check(
        "meta value of 256 two-byte characters",
        with(|d| {
            d.meta.insert("k".into(), "\u{e9}".repeat(256));
        }),
        &[],
    );
    // Byte offsets in messages are byte offsets too.
    check(
        "control character after multi-byte characters",
        with(|d| d.tags = vec!["\u{e9}\u{e9}\u{0}".into()]),
        &[(
            "tags[0]",
            "control character U+0000 at byte 4 is not allowed",
        )],
    );
}

#[test]
fn configured_limits_are_honoured() {
    let mut tight = Limits::standard();
    tight.max_tags = 2;
    tight.max_tag_len = 4;
    tight.max_meta_keys = 1;
    tight.max_meta_value_len = 3;
    tight.max_name_len = 5;
    check_with(
        &tight,
        "tight limits",
        InstanceDraft {
            id: "abcdef".into(),
            service: "web".into(),
            tags: vec!["a".into(), "bbbbb".into(), "c".into(), "a".into()],
            meta: [("k1", "v"), ("k2", "long")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into_iter()
                .collect(),
            ..InstanceDraft::default()
        },
        &[
            ("id", "6 bytes, limit 5"),
            ("tags[1]", "5 bytes, limit 4"),
            ("tags", "3 distinct tags, limit 2"),
            ("meta", "2 keys, limit 1"),
            ("meta.k2", "value is 4 bytes, limit 3"),
        ],
    );
}

#[test]
fn drafts_deserialise_loosely_so_that_validation_names_the_limit() {
    let draft: InstanceDraft =
        serde_json::from_str(r#"{"id":"a","service":"web","port":70000,"tags":["x","x"]}"#)
            .expect("a loose draft parses");
    check(
        "port from JSON",
        draft,
        &[("port", "70000 is out of range 0 to 65535")],
    );
    let unknown = serde_json::from_str::<InstanceDraft>(r#"{"id":"a","servce":"web"}"#);
    assert!(unknown.is_err(), "unknown fields are rejected");
}

#[test]
fn errors_display_joined_with_semicolons_and_can_be_prefixed() {
    let errors = match validate(
        with(|d| {
            d.id.clear();
            d.port = 70_000;
        }),
        &Limits::standard(),
    ) {
        Ok(_) => panic!("accepted"),
        Err(errors) => errors,
    };
    assert_eq!(
        errors.to_string(),
        "id: required, must be 1 to 128 bytes; port: 70000 is out of range 0 to 65535"
    );
    let prefixed = errors.clone().prefixed("[3].");
    assert_eq!(
        prefixed
            .violations
            .iter()
            .map(|v| v.field.as_str())
            .collect::<Vec<_>>(),
        ["[3].id", "[3].port"]
    );
    assert_eq!(
        prefixed.to_string(),
        "[3].id: required, must be 1 to 128 bytes; [3].port: 70000 is out of range 0 to 65535"
    );
    // Messages are untouched by the prefix.
    assert_eq!(
        prefixed
            .violations
            .iter()
            .map(|v| v.message.as_str())
            .collect::<Vec<_>>(),
        errors
            .violations
            .iter()
            .map(|v| v.message.as_str())
            .collect::<Vec<_>>()
    );
    let single = ValidationErrors {
        violations: vec![Violation {
            field: "tags[3]".into(),
            message: "131 bytes, limit 128".into(),
        }],
    };
    assert_eq!(single.to_string(), "tags[3]: 131 bytes, limit 128");
    assert_eq!(
        serde_json::to_value(&single.violations[0]).expect("serialises"),
        serde_json::json!({"field": "tags[3]", "message": "131 bytes, limit 128"})
    );
}

#[test]
fn field_predicates_follow_the_validation_rules() {
    let limits = Limits::standard();
    for (value, ok) in [
        ("prod", true),
        ("eu-west-1", true),
        ("0a.b_c", true),
        ("", false),
        ("Prod", false),
        ("-prod", false),
        ("eu west", false),
        ("прод", false),
    ] {
        assert_eq!(slug_is_valid(value, &limits), ok, "{value:?}");
    }
    assert!(
        !slug_is_valid(&"a".repeat(65), &limits),
        "over max_slug_len"
    );
    let pinned = Limits {
        environments: Some(vec!["prod".to_string()]),
        ..Limits::standard()
    };
    assert!(
        slug_is_valid("staging", &pinned),
        "allowed lists are not consulted"
    );
    for (value, ok) in [
        ("1.2.3", true),
        ("alpine", true),
        ("", false),
        ("1 2", false),
    ] {
        assert_eq!(version_is_valid(value, &limits), ok, "{value:?}");
    }
    let semver = Limits {
        version_format: VersionFormat::Semver,
        ..Limits::standard()
    };
    assert!(version_is_valid("v2", &semver));
    assert!(!version_is_valid("alpine", &semver));
}
