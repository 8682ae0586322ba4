//! Request validation against the official schema subset (`fixtures/pve/pve-api-subset.json`).
//!
//! pveproxy checks every request against the method's JSON schema before the handler runs
//! (`PVE::JSONSchema::validate`); the simulator does the same so that a client bug that a real
//! server would reject cannot pass in the demo or the tests. Checked: the path matches an
//! endpoint template, the method exists for it, every parameter (path, query and body) is
//! declared, required ones are present, and values match `type`, `enum`, `minimum`/`maximum`,
//! `minLength`/`maxLength`, the formats resolved in the subset's `formats` table (`pve-node`,
//! `pve-vmid`, `pve-configid`, `dns-name`, `mac-addr`, `pve-storage-id`, `pve-bridge-id`,
//! `pve-poolid`, `pve-storage-content`, `pve-tag`, and their `-list` forms) and `pattern`.
//! Numbered parameters (`net[n]` → `net0`, with the `n is A to B` range of the description),
//! property strings (a `format` that is an object: `net0=virtio=BC:…,bridge=vmbr0`, `memory`,
//! `agent`; keys, aliases, default keys and sub-values) and `requires` (`unique` needs
//! `archive`) are checked as `parse_property_string`/`check_object` do. Formats and patterns
//! outside that set (e.g. `CIDR`, `pve-qm-ipconfig`, disk volumes) are not checked; none of
//! them is on a parameter our client sends. Error texts are pve-common's.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::Value;

/// The schema subset, compiled into the binary so the demo needs no files.
const SUBSET: &str = include_str!("../../../fixtures/pve/pve-api-subset.json");

/// A parameter value as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// From the path, the query string or a form body: always text.
    Text(String),
    /// From a JSON body: typed (`true` is fine here, unlike in a form).
    Json(Value),
}

/// A request that passed: its endpoint template and every parameter as text (booleans `1`/`0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The template, e.g. `/nodes/{node}/qemu/{vmid}/snapshot`.
    pub template: &'static str,
    pub params: BTreeMap<String, String>,
}

impl Matched {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
    /// A boolean parameter (validated as `1`/`0`), or `default` when absent.
    pub fn flag(&self, name: &str, default: bool) -> bool {
        self.get(name).map_or(default, |v| v == "1")
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No such path or method: 501 `Method 'GET /x' not implemented`.
    NotImplemented(String),
    /// 400 `Parameter verification failed.` with these per-parameter errors.
    Invalid(BTreeMap<String, String>),
}

impl Rejection {
    /// The per-parameter errors (`_path` for a missing endpoint), as recorded in violations.
    pub fn errors(&self) -> BTreeMap<String, String> {
        match self {
            Rejection::NotImplemented(m) => BTreeMap::from([("_path".to_owned(), m.clone())]),
            Rejection::Invalid(e) => e.clone(),
        }
    }
}

struct Endpoint {
    template: &'static str,
    segments: Vec<&'static str>,
    method: String,
    props: BTreeMap<String, Prop>,
    additional: bool,
}

#[derive(Debug)]
struct Prop {
    ty: String,
    optional: bool,
    /// A named format.
    format: Option<String>,
    /// A property-string format: sub-key → its schema.
    object: Option<BTreeMap<String, Prop>>,
    /// `alias` (and `keyAlias`) of a property-string sub-key: `virtio` → `macaddr`, key `model`.
    alias: Option<(String, Option<String>)>,
    default_key: bool,
    /// Another parameter this one needs (`unique` → `archive`).
    requires: Option<String>,
    /// For a numbered parameter (`net[n]`): the `n is A to B` range its description gives.
    range: Option<(u32, u32)>,
    enumeration: Option<Vec<String>>,
    pattern: Option<String>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    min_length: Option<usize>,
    max_length: Option<usize>,
}

static ENDPOINTS: LazyLock<Vec<Endpoint>> = LazyLock::new(compile);

fn compile() -> Vec<Endpoint> {
    // Leaked once: the templates live as long as the process, and `Matched` borrows them.
    let root: &'static Value = Box::leak(Box::new(
        serde_json::from_str(SUBSET).expect("the embedded PVE schema subset is valid JSON"),
    ));
    let mut out = Vec::new();
    for e in root["endpoints"].as_array().into_iter().flatten() {
        let (Some(path), Some(method)) = (e["path"].as_str(), e["method"].as_str()) else {
            continue;
        };
        let params = &e["parameters"];
        let props = params["properties"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.is_object())
                    .map(|(k, v)| (k.clone(), prop(v)))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Endpoint {
            template: path,
            segments: path.trim_matches('/').split('/').collect(),
            method: method.to_owned(),
            props,
            additional: truthy(&params["additionalProperties"]),
        });
    }
    out
}

/// `… (n is 0 to 30) …` → `(0, 30)`.
fn n_range(description: &str) -> Option<(u32, u32)> {
    let number = |s: &str| -> Option<u32> {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    let rest = &description[description.find("n is ")? + 5..];
    let (from, to) = rest.split_once(" to ")?;
    Some((number(from)?, number(to)?))
}

/// The schema key of a parameter: itself, or `net[n]` for `net0` when that is declared.
fn schema_key<'a>(props: &'a BTreeMap<String, Prop>, name: &str) -> Option<&'a str> {
    if let Some((k, _)) = props.get_key_value(name) {
        return Some(k);
    }
    let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
    let base = &name[..name.len() - digits.len()];
    let n: u32 = digits.parse().ok()?;
    // No leading zeros: `net01` is not `net1`.
    if digits.is_empty() || n.to_string() != digits {
        return None;
    }
    let (k, p) = props.get_key_value(&format!("{base}[n]"))?;
    match p.range {
        Some((a, b)) if n < a || n > b => None,
        _ => Some(k),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        _ => false,
    }
}

fn prop(v: &Value) -> Prop {
    let num = |k: &str| v[k].as_f64();
    let len = |k: &str| v[k].as_u64().and_then(|n| usize::try_from(n).ok());
    Prop {
        ty: v["type"].as_str().unwrap_or("string").to_owned(),
        optional: truthy(&v["optional"]),
        format: v["format"].as_str().map(str::to_owned),
        object: v["format"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), prop(v))).collect()),
        alias: v["alias"]
            .as_str()
            .map(|a| (a.to_owned(), v["keyAlias"].as_str().map(str::to_owned))),
        default_key: truthy(&v["default_key"]),
        requires: v["requires"].as_str().map(str::to_owned),
        range: v["description"].as_str().and_then(n_range),
        enumeration: v["enum"].as_array().map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                .collect()
        }),
        pattern: v["pattern"].as_str().map(str::to_owned),
        minimum: num("minimum"),
        maximum: num("maximum"),
        min_length: len("minLength"),
        max_length: len("maxLength"),
    }
}

/// Finds the endpoint for `method` and `path` (below `/api2/json`, decoded segments) and checks
/// the parameters: `path` parameters come from the path, `params` from query and body.
pub fn check(
    method: &str,
    segments: &[String],
    params: &[(String, ParamValue)],
) -> Result<Matched, Rejection> {
    let not_impl = || {
        Rejection::NotImplemented(format!(
            "Method '{method} /{}' not implemented",
            segments.join("/")
        ))
    };
    let fits = |e: &Endpoint| {
        e.segments.len() == segments.len()
            && e.segments
                .iter()
                .zip(segments)
                .all(|(t, s)| (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s)
    };
    let ep = ENDPOINTS
        .iter()
        .find(|e| fits(e) && e.method == method)
        .ok_or_else(not_impl)?;

    let mut errors = BTreeMap::new();
    let mut given: BTreeMap<String, ParamValue> = BTreeMap::new();
    for (t, s) in ep.segments.iter().zip(segments) {
        if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            given.insert(name.to_owned(), ParamValue::Text(s.clone()));
        }
    }
    for (k, v) in params {
        if given.contains_key(k) {
            errors.insert(k.clone(), "parameter given more than once".to_owned());
        } else {
            given.insert(k.clone(), v.clone());
        }
    }
    let mut out = BTreeMap::new();
    for (name, p) in ep.props.iter().filter(|(k, _)| !k.ends_with("[n]")) {
        if !given.contains_key(name) && !p.optional {
            errors.insert(
                name.clone(),
                "property is missing and it is not optional".to_owned(),
            );
        }
    }
    for (name, v) in &given {
        let Some(key) = schema_key(&ep.props, name) else {
            if !ep.additional {
                errors.insert(
                    name.clone(),
                    "property is not defined in schema and the schema does not allow \
                     additional properties"
                        .to_owned(),
                );
            }
            continue;
        };
        let p = &ep.props[key];
        match check_value(p, v, name) {
            Ok(text) => {
                out.insert(name.clone(), text);
            }
            Err(e) => {
                errors.entry(name.clone()).or_insert(e);
            }
        }
        if let Some(req) = &p.requires
            && !given.contains_key(req)
        {
            errors.insert(
                req.clone(),
                format!("missing property - '{name}' requires this property"),
            );
        }
    }
    if errors.is_empty() {
        Ok(Matched {
            template: ep.template,
            params: out,
        })
    } else {
        Err(Rejection::Invalid(errors))
    }
}

/// Checks one value; returns it as text (booleans as `1`/`0`). `path` names it in the errors of
/// a property string (`net0.macaddr`).
fn check_value(p: &Prop, v: &ParamValue, path: &str) -> Result<String, String> {
    let text = match v {
        ParamValue::Text(s) => s.clone(),
        ParamValue::Json(Value::String(s)) => s.clone(),
        ParamValue::Json(Value::Bool(b)) if p.ty == "boolean" => u8::from(*b).to_string(),
        ParamValue::Json(Value::Number(n)) => n.to_string(),
        ParamValue::Json(other) => {
            return Err(format!("type check ('{}') failed - got {other}", p.ty));
        }
    };
    let type_err = || format!("type check ('{}') failed - got '{text}'", p.ty);
    match p.ty.as_str() {
        "boolean" => {
            if text != "1" && text != "0" {
                return Err(type_err());
            }
        }
        "integer" | "number" => {
            let value = if p.ty == "integer" {
                let digits = text.strip_prefix(['+', '-']).unwrap_or(&text);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(type_err());
                }
                text.parse::<f64>().map_err(|_| type_err())?
            } else {
                text.parse::<f64>().map_err(|_| type_err())?
            };
            if let Some(min) = p.minimum
                && value < min
            {
                return Err(format!("value must have a minimum value of {min}"));
            }
            if let Some(max) = p.maximum
                && value > max
            {
                return Err(format!("value must have a maximum value of {max}"));
            }
        }
        _ => {
            let n = text.chars().count();
            if let Some(max) = p.max_length
                && n > max
            {
                return Err(format!("value may only be {max} characters long"));
            }
            if let Some(min) = p.min_length
                && n < min
            {
                return Err(format!("value must be at least {min} characters long"));
            }
            if let Some(list) = &p.enumeration
                && !list.contains(&text)
            {
                return Err(format!(
                    "value '{text}' does not have a value in the enumeration '{}'",
                    list.join(", ")
                ));
            }
            if let Some(pattern) = &p.pattern
                && pattern_matches(pattern, &text) == Some(false)
            {
                return Err("value does not match the regex pattern".to_owned());
            }
        }
    }
    if let Some(format) = &p.format {
        check_format(format, &text)?;
    }
    if let Some(object) = &p.object {
        check_property_string(object, &text, path).map_err(|e| format!("invalid format - {e}"))?;
    }
    Ok(text)
}

/// pve-common `parse_property_string` + `check_object`: `k=v,…`, a bare value for the
/// `default_key`, aliases (`virtio=MAC` is `model=virtio,macaddr=MAC`). A key error is one
/// line; sub-value errors are `format error` followed by `<path>.<key>: <error>` lines.
fn check_property_string(
    format: &BTreeMap<String, Prop>,
    data: &str,
    path: &str,
) -> Result<(), String> {
    let mut res: BTreeMap<String, String> = BTreeMap::new();
    for part in data.split(',').filter(|p| !p.trim().is_empty()) {
        if let Some((k, v)) = part
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        {
            if res.contains_key(k) {
                return Err(format!(
                    "duplicate key in comma-separated list property: {k}\n"
                ));
            }
            let mut key = k.to_owned();
            if let Some((alias, key_alias)) = format.get(k).and_then(|s| s.alias.clone()) {
                if let Some(ka) = key_alias {
                    if res.contains_key(&ka) {
                        return Err(format!("key alias '{ka}' is already defined\n"));
                    }
                    res.insert(ka, k.to_owned());
                }
                key = alias;
            }
            if !format.contains_key(&key) {
                return Err(format!(
                    "invalid key in comma-separated list property: {key}\n"
                ));
            }
            res.insert(key, v.to_owned());
        } else if !part.contains('=') {
            let Some((dk, _)) = format.iter().find(|(_, s)| s.default_key) else {
                return Err(
                    "value without key, but schema does not define a default key\n".to_owned(),
                );
            };
            if res.contains_key(dk) {
                return Err(format!(
                    "duplicate key in comma-separated list property: {dk}\n"
                ));
            }
            res.insert(dk.clone(), part.to_owned());
        } else {
            return Err("missing key in comma-separated list property\n".to_owned());
        }
    }
    let mut errors: Vec<String> = Vec::new();
    for (k, s) in format.iter().filter(|(_, s)| s.alias.is_none()) {
        let sub_path = format!("{path}.{k}");
        match res.get(k) {
            None if !s.optional && !s.default_key => {
                errors.push(format!(
                    "{sub_path}: property is missing and it is not optional"
                ));
            }
            None => {}
            Some(v) => {
                // Booleans in property strings also take on/off/yes/no/true/false.
                let v = match (s.ty.as_str(), v.to_ascii_lowercase().as_str()) {
                    ("boolean", "1" | "on" | "yes" | "true") => "1".to_owned(),
                    ("boolean", "0" | "off" | "no" | "false") => "0".to_owned(),
                    _ => v.clone(),
                };
                if let Err(e) = check_value(s, &ParamValue::Text(v), &sub_path) {
                    errors.push(format!("{sub_path}: {}", e.trim_end_matches('\n')));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("format error\n{}\n", errors.join("\n")))
    }
}

/// Named formats from the subset's `formats` table. Messages end with `\n` as pve-common's do.
/// A `-list` format checks every element of the list (split on `,`, `;` and whitespace).
fn check_format(format: &str, v: &str) -> Result<(), String> {
    if let Some(base) = format.strip_suffix("-list") {
        return v
            .split([',', ';', ' ', '\t', '\n'])
            .filter(|e| !e.is_empty())
            .try_for_each(|e| check_format(base, e));
    }
    let bad = |m: String| Err(format!("invalid format - {m}\n"));
    let id = |s: &str| {
        let b = s.as_bytes();
        b.len() >= 2
            && b[0].is_ascii_alphabetic()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    };
    match format {
        "mac-addr" if !is_unicast_mac(v) => {
            bad("value does not look like a valid unicast MAC address".into())
        }
        "pve-storage-id" if !id(v) => bad(format!("storage ID '{v}' contains illegal characters")),
        "pve-bridge-id"
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            bad(format!("invalid bridge ID '{v}'"))
        }
        "pve-poolid"
            if v.is_empty()
                || v.split('/').count() > 3
                || !v.split('/').all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                }) =>
        {
            bad(format!("pool name '{v}' contains invalid characters"))
        }
        "pve-storage-content"
            if !matches!(
                v,
                "images" | "rootdir" | "vztmpl" | "iso" | "backup" | "snippets" | "import"
            ) =>
        {
            bad(format!("invalid content type '{v}'"))
        }
        "pve-tag"
            if !v.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.')) =>
        {
            bad(format!("invalid characters in tag '{v}'"))
        }
        "pve-node" if !is_label(v) => bad("value does not look like a valid node name".into()),
        "pve-vmid" if !is_vmid(v) => bad("value does not look like a valid VM ID".into()),
        "pve-configid" if !is_config_id(v) => bad(format!("invalid configuration ID '{v}'")),
        "dns-name" if !v.split('.').all(is_label) => {
            bad(format!("value does not look like a valid DNS name: '{v}'"))
        }
        _ => Ok(()),
    }
}

/// `[a-f0-9][02468ace](?::[a-f0-9]{2}){5}`, case-insensitive: the I/G bit must be clear.
fn is_unicast_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

/// `[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?`
fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `[1-9][0-9]{2,8}`
fn is_vmid(s: &str) -> bool {
    (3..=9).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit()) && !s.starts_with('0')
}

/// `[a-z][a-z0-9_-]+`, case-insensitive.
fn is_config_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

/// The parameter patterns of the subset, anchored as Perl's `m/^$pattern$/` is; `None` for
/// a pattern this simulator does not know (then the value is accepted).
fn pattern_matches(pattern: &str, v: &str) -> Option<bool> {
    match pattern {
        // `net\d+=\d+(,net\d+=\d+)*` (start: nets-host-mtu)
        r"net\d+=\d+(,net\d+=\d+)*" => Some(v.split(',').all(|item| {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
            item.strip_prefix("net")
                .and_then(|r| r.split_once('='))
                .is_some_and(|(a, b)| digits(a) && digits(b))
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.trim_matches('/')
            .split('/')
            .map(str::to_owned)
            .collect()
    }

    fn text(pairs: &[(&str, &str)]) -> Vec<(String, ParamValue)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ParamValue::Text((*v).to_owned())))
            .collect()
    }

    fn invalid(method: &str, path: &str, params: &[(&str, &str)]) -> BTreeMap<String, String> {
        match check(method, &segs(path), &text(params)) {
            Err(Rejection::Invalid(e)) => e,
            other => panic!("{method} {path} {params:?}: expected 400, got {other:?}"),
        }
    }

    #[test]
    fn the_subset_compiles_to_twenty_five_methods() {
        // 16 paths of the snapshot work (`…/snapshot` has GET and POST) and the 8 methods of a
        // rebuild (`…/config` has PUT and POST besides the GET).
        assert_eq!(ENDPOINTS.len(), 25);
        assert!(ENDPOINTS.iter().all(|e| !e.additional));
    }

    /// Exactly what `PveClient` sends (see src/pve/client.rs and task.rs).
    #[test]
    fn the_clients_requests_pass() {
        let upid = "UPID:pve1:000B0001:0197A1E3:6650A1B2:qmsnapshot:101:k8s-dr@pve!cli:";
        type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
        let ok: Vec<Case> = vec![
            ("GET", "/version".into(), vec![]),
            ("GET", "/nodes".into(), vec![]),
            ("GET", "/cluster/resources".into(), vec![("type", "vm")]),
            ("GET", "/nodes/pve1/qemu".into(), vec![]),
            ("GET", "/nodes/pve1/qemu/101/status/current".into(), vec![]),
            ("GET", "/nodes/pve1/qemu/101/config".into(), vec![]),
            (
                "GET",
                "/nodes/pve1/qemu/101/feature".into(),
                vec![("feature", "snapshot")],
            ),
            (
                "GET",
                "/nodes/pve1/qemu/101/agent/network-get-interfaces".into(),
                vec![],
            ),
            ("GET", "/nodes/pve1/qemu/101/snapshot".into(), vec![]),
            (
                "POST",
                "/nodes/pve1/qemu/101/snapshot".into(),
                vec![
                    ("snapname", "talosdr-pre-2501060900"),
                    ("description", "talos-dr: before etcd restore"),
                    ("vmstate", "0"),
                ],
            ),
            (
                "DELETE",
                "/nodes/pve1/qemu/101/snapshot/talosdr-pre-2501060900".into(),
                vec![("force", "1")],
            ),
            (
                "POST",
                "/nodes/pve1/qemu/101/snapshot/talosdr-pre-2501060900/rollback".into(),
                vec![("start", "1")],
            ),
            ("POST", "/nodes/pve1/qemu/101/status/start".into(), vec![]),
            (
                "POST",
                "/nodes/pve1/qemu/101/status/shutdown".into(),
                vec![("forceStop", "1"), ("timeout", "60")],
            ),
            ("POST", "/nodes/pve1/qemu/101/status/stop".into(), vec![]),
            ("GET", format!("/nodes/pve1/tasks/{upid}/status"), vec![]),
            (
                "GET",
                format!("/nodes/pve1/tasks/{upid}/log"),
                vec![("start", "0"), ("limit", "500")],
            ),
        ];
        for (m, p, q) in ok {
            let r = check(m, &segs(&p), &text(&q));
            assert!(r.is_ok(), "{m} {p} {q:?}: {r:?}");
        }
        let m = check(
            "POST",
            &segs("/nodes/pve1/qemu/101/snapshot/x1/rollback"),
            &text(&[("start", "1")]),
        )
        .unwrap();
        assert_eq!(
            m.template,
            "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback"
        );
        assert_eq!(m.get("snapname"), Some("x1"));
        assert!(m.flag("start", false));
    }

    #[test]
    fn unknown_parameter_is_rejected() {
        let e = invalid(
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            &[("snapname", "ok1"), ("vmstat", "0")],
        );
        assert_eq!(
            e["vmstat"],
            "property is not defined in schema and the schema does not allow additional properties"
        );
        assert_eq!(e.len(), 1);
        let e = invalid("GET", "/version", &[("verbose", "1")]);
        assert!(e.contains_key("verbose"));
    }

    #[test]
    fn boolean_must_be_one_or_zero() {
        let e = invalid(
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            &[("snapname", "ok1"), ("vmstate", "true")],
        );
        assert_eq!(e["vmstate"], "type check ('boolean') failed - got 'true'");
        let e = invalid(
            "DELETE",
            "/nodes/pve1/qemu/101/snapshot/ok1",
            &[("force", "yes")],
        );
        assert!(e["force"].starts_with("type check ('boolean')"));
        // A JSON body may use real booleans.
        let json = vec![
            ("snapname".to_owned(), ParamValue::Json(Value::from("ok1"))),
            ("vmstate".to_owned(), ParamValue::Json(Value::Bool(true))),
        ];
        let m = check("POST", &segs("/nodes/pve1/qemu/101/snapshot"), &json).unwrap();
        assert_eq!(m.get("vmstate"), Some("1"));
    }

    #[test]
    fn bad_snapshot_names_are_rejected() {
        let e = invalid(
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            &[("snapname", "1bad")],
        );
        assert_eq!(
            e["snapname"],
            "invalid format - invalid configuration ID '1bad'\n"
        );
        let e = invalid(
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            &[("snapname", "k8sdr-20240524T14:18")],
        );
        assert!(e["snapname"].contains("invalid configuration ID"));
        let long = format!("a{}", "b".repeat(40));
        let e = invalid(
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            &[("snapname", &long)],
        );
        assert_eq!(e["snapname"], "value may only be 40 characters long");
        // In the path too.
        let e = invalid("POST", "/nodes/pve1/qemu/101/snapshot/a/rollback", &[]);
        assert!(e["snapname"].contains("invalid configuration ID 'a'"));
    }

    #[test]
    fn missing_required_parameter_is_rejected() {
        let e = invalid(
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            &[("description", "x")],
        );
        assert_eq!(e["snapname"], "property is missing and it is not optional");
        let e = invalid("GET", "/nodes/pve1/qemu/101/feature", &[]);
        assert!(e.contains_key("feature"));
    }

    #[test]
    fn types_formats_and_enums() {
        let e = invalid("GET", "/nodes/pve1/qemu/abc/status/current", &[]);
        assert_eq!(e["vmid"], "type check ('integer') failed - got 'abc'");
        let e = invalid("GET", "/nodes/pve1/qemu/99/status/current", &[]);
        assert_eq!(e["vmid"], "value must have a minimum value of 100");
        let e = invalid("GET", "/nodes/-pve/qemu", &[]);
        assert!(e["node"].contains("valid node name"));
        let e = invalid("GET", "/cluster/resources", &[("type", "qemu")]);
        assert_eq!(
            e["type"],
            "value 'qemu' does not have a value in the enumeration 'vm, storage, node, sdn'"
        );
        let e = invalid("GET", "/nodes/pve1/tasks/UPID:x/log", &[("limit", "-1")]);
        assert_eq!(e["limit"], "value must have a minimum value of 0");
        let e = invalid(
            "POST",
            "/nodes/pve1/qemu/101/status/start",
            &[("nets-host-mtu", "net0=1500,eth1=9000")],
        );
        assert_eq!(e["nets-host-mtu"], "value does not match the regex pattern");
        assert!(
            check(
                "POST",
                &segs("/nodes/pve1/qemu/101/status/start"),
                &text(&[("nets-host-mtu", "net0=1500,net1=9000")]),
            )
            .is_ok()
        );
    }

    #[test]
    fn unknown_paths_and_methods_are_not_implemented() {
        for (m, p) in [
            ("GET", "/nodes/pve1/qemu/101/snapshots"),
            ("PUT", "/nodes/pve1/qemu/101/snapshot"),
            ("POST", "/version"),
            ("GET", "/nodes/pve1/qemu/101/status"),
        ] {
            assert_eq!(
                check(m, &segs(p), &[]),
                Err(Rejection::NotImplemented(format!(
                    "Method '{m} {p}' not implemented"
                ))),
            );
        }
    }

    /// What a rebuild sends: restore, clone, config, nextid, storage listing, destroy.
    #[test]
    fn rebuild_requests_pass() {
        type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
        let ok: Vec<Case> = vec![
            ("GET", "/cluster/nextid", vec![]),
            ("GET", "/cluster/nextid", vec![("vmid", "105")]),
            (
                "GET",
                "/nodes/pve1/storage",
                vec![("content", "backup"), ("enabled", "1")],
            ),
            (
                "GET",
                "/nodes/pve1/storage",
                vec![("content", "images,backup")],
            ),
            (
                "GET",
                "/nodes/pve1/storage/pbs/content",
                vec![("content", "backup"), ("vmid", "103")],
            ),
            (
                "POST",
                "/nodes/pve1/qemu",
                vec![
                    ("vmid", "106"),
                    (
                        "archive",
                        "nfs:backup/vzdump-qemu-103-2025_01_01-02_00_05.vma.zst",
                    ),
                    ("storage", "local-lvm"),
                    ("unique", "0"),
                    ("name", "talos-cp-3"),
                ],
            ),
            (
                "POST",
                "/nodes/pve1/qemu/9000/clone",
                vec![
                    ("newid", "106"),
                    ("name", "talos-cp-3"),
                    ("full", "1"),
                    ("target", "pve2"),
                ],
            ),
            (
                "PUT",
                "/nodes/pve1/qemu/106/config",
                vec![
                    ("net0", "virtio=BC:24:11:00:00:03,bridge=vmbr0,firewall=1"),
                    ("cores", "2"),
                    ("memory", "4096"),
                    ("agent", "enabled=1"),
                    ("digest", "0123456789abcdef0123456789abcdef01234567"),
                ],
            ),
            (
                "POST",
                "/nodes/pve1/qemu/106/config",
                vec![
                    (
                        "net0",
                        "model=virtio,macaddr=bc:24:11:00:00:03,bridge=vmbr0",
                    ),
                    ("memory", "current=4096"),
                    ("delete", "ide2,tags"),
                ],
            ),
            (
                "DELETE",
                "/nodes/pve1/qemu/106",
                vec![("purge", "1"), ("destroy-unreferenced-disks", "1")],
            ),
        ];
        for (m, p, q) in ok {
            let r = check(m, &segs(p), &text(&q));
            assert!(r.is_ok(), "{m} {p} {q:?}: {r:?}");
        }
        let m = check(
            "PUT",
            &segs("/nodes/pve1/qemu/106/config"),
            &text(&[("net0", "virtio=BC:24:11:00:00:03,bridge=vmbr0")]),
        )
        .unwrap();
        assert_eq!(m.get("net0"), Some("virtio=BC:24:11:00:00:03,bridge=vmbr0"));
    }

    #[test]
    fn rebuild_requests_are_checked() {
        let put = "/nodes/pve1/qemu/106/config";
        // A multicast MAC (I/G bit set), as pve-common reports it inside a property string.
        let e = invalid(
            "PUT",
            put,
            &[("net0", "virtio=BD:24:11:00:00:03,bridge=vmbr0")],
        );
        assert_eq!(
            e["net0"],
            "invalid format - format error\nnet0.macaddr: invalid format - value does not look like a valid unicast MAC address\n"
        );
        let e = invalid(
            "PUT",
            put,
            &[("net0", "virtio=BC:24:11:00:00:03,bridgee=vmbr0")],
        );
        assert_eq!(
            e["net0"],
            "invalid format - invalid key in comma-separated list property: bridgee\n"
        );
        let e = invalid(
            "PUT",
            put,
            &[("net0", "virtio,bridge=vmbr0,firewall=maybe")],
        );
        assert!(
            e["net0"].contains("net0.firewall: type check ('boolean') failed"),
            "{e:?}"
        );
        let e = invalid("PUT", put, &[("memory", "8")]);
        assert!(
            e["memory"].contains("memory.current: value must have a minimum value of 16"),
            "{e:?}"
        );
        // `net[n]` is net0…; `ide[n]` only 0 to 3; no leading zeros.
        let e = invalid(
            "PUT",
            put,
            &[("ide4", "none,media=cdrom"), ("net01", "virtio")],
        );
        assert!(e.contains_key("ide4") && e.contains_key("net01"), "{e:?}");
        assert!(check("PUT", &segs(put), &text(&[("ide3", "none,media=cdrom")])).is_ok());
        // `unique` needs `archive`.
        let e = invalid(
            "POST",
            "/nodes/pve1/qemu",
            &[("vmid", "106"), ("unique", "1")],
        );
        assert_eq!(
            e["archive"],
            "missing property - 'unique' requires this property"
        );
        let e = invalid("POST", "/nodes/pve1/qemu/9000/clone", &[("full", "1")]);
        assert_eq!(e["newid"], "property is missing and it is not optional");
        let e = invalid("GET", "/nodes/pve1/storage", &[("content", "backup,isos")]);
        assert_eq!(
            e["content"],
            "invalid format - invalid content type 'isos'\n"
        );
        let e = invalid("GET", "/nodes/pve1/storage/1nfs/content", &[]);
        assert_eq!(
            e["storage"],
            "invalid format - storage ID '1nfs' contains illegal characters\n"
        );
        // DELETE parameters travel in the query string and are checked as well.
        let e = invalid("DELETE", "/nodes/pve1/qemu/106", &[("purge", "true")]);
        assert_eq!(e["purge"], "type check ('boolean') failed - got 'true'");
        let e = invalid("GET", "/cluster/nextid", &[("vmid", "99")]);
        assert_eq!(e["vmid"], "value must have a minimum value of 100");
    }

    #[test]
    fn duplicate_parameters_are_rejected() {
        let e = invalid(
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            &[("snapname", "ok1"), ("snapname", "ok2")],
        );
        assert!(e.contains_key("snapname"));
    }
}
