//! Kubernetes manifests as import input: every Deployment and StatefulSet (also inside a
//! `kind: List`) becomes `spec.replicas` drafts, following the mapping of DESIGN §4.
//!
//! It reads manifests only: it does not contact a cluster, resolve Helm or Kustomize templates,
//! or evaluate `matchExpressions`; other kinds are counted and skipped, and Services are used
//! only to find the DNS name of the workload's pods.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use svcmeta_core::InstanceDraft;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, ScanError};
use yaml_rust2::{Yaml, YamlLoader};

use super::{plural, Failure, Format, Location, Parsed};

/// Annotation values longer than this (bytes) are dropped with a warning, as the meta value
/// limit would reject them (kubectl's last-applied-configuration, for one).
const MAX_ANNOTATION_VALUE: usize = 512;

/// A workload asking for more replicas than this is refused rather than expanded.
const MAX_REPLICAS: i64 = 1_000_000;

/// Label keys for each derived field, in order of preference.
const SERVICE_LABELS: [&str; 2] = ["app.kubernetes.io/name", "app"];
const VERSION_LABELS: [&str; 2] = ["app.kubernetes.io/version", "version"];
const ENVIRONMENT_LABELS: [&str; 2] = ["environment", "env"];
const REGION_LABELS: [&str; 2] = ["topology.kubernetes.io/region", "region"];

/// Loads multi-document YAML and maps it.
pub(super) fn parse_yaml(text: &str) -> Result<Parsed, Failure> {
    let (docs, lines) = load_yaml(text)?;
    let documents = docs
        .iter()
        .zip(lines)
        .enumerate()
        .map(|(index, (doc, line))| (index + 1, Some(line), doc))
        .collect::<Vec<_>>();
    map_documents(&documents)
}

/// The JSON form of manifests (`kubectl get -o json`): each element is one document.
pub(super) fn from_json(items: Vec<Value>) -> Result<Parsed, Failure> {
    let docs = items.iter().map(json_to_yaml).collect::<Vec<_>>();
    let documents = docs
        .iter()
        .enumerate()
        .map(|(index, doc)| (index + 1, None, doc))
        .collect::<Vec<_>>();
    map_documents(&documents)
}

fn json_to_yaml(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(flag) => Yaml::Boolean(*flag),
        Value::Number(number) => match number.as_i64() {
            Some(int) => Yaml::Integer(int),
            None => Yaml::Real(number.to_string()),
        },
        Value::String(text) => Yaml::String(text.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(json_to_yaml).collect()),
        Value::Object(map) => Yaml::Hash(
            map.iter()
                .map(|(key, value)| (Yaml::String(key.clone()), json_to_yaml(value)))
                .collect(),
        ),
    }
}

/// Records where each document starts while a [`YamlLoader`] builds the documents.
#[derive(Default)]
struct Tracker {
    loader: YamlLoader,
    /// Marker index of each `DocumentStart` event.
    starts: Vec<usize>,
    /// 1-based line of each document's root node (or of its start, when empty).
    lines: Vec<usize>,
    awaiting_root: bool,
}

impl MarkedEventReceiver for Tracker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::DocumentStart => {
                self.starts.push(mark.index());
                self.lines.push(mark.line());
                self.awaiting_root = true;
            }
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
            _ => {
                if self.awaiting_root {
                    if let Some(line) = self.lines.last_mut() {
                        *line = mark.line();
                    }
                    self.awaiting_root = false;
                }
            }
        }
        self.loader.on_event(ev, mark);
    }
}

/// Parses every document; returns them with the line each starts on.
fn load_yaml(text: &str) -> Result<(Vec<Yaml>, Vec<usize>), Failure> {
    let mut tracker = Tracker::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(err) = parser.load(&mut tracker, true) {
        return Err(yaml_error(&err, tracker.starts.len()));
    }
    let docs = tracker.loader.documents();
    if docs.len() != tracker.starts.len() {
        // The loader stopped on an error of its own (a duplicated key): load again to get it.
        if let Err(err) = YamlLoader::load_from_str(text) {
            let document = tracker
                .starts
                .iter()
                .filter(|&&start| start <= err.marker().index())
                .count();
            return Err(yaml_error(&err, document));
        }
        return Err(Failure {
            location: None,
            message: "invalid YAML: the document count does not match".to_string(),
        });
    }
    Ok((docs.to_vec(), tracker.lines))
}

fn yaml_error(err: &ScanError, document: usize) -> Failure {
    Failure::at(
        Location::Document {
            document: document.max(1),
            line: Some(err.marker().line()),
            column: Some(err.marker().col() + 1),
            item: None,
        },
        format!("invalid YAML: {}", err.info()),
    )
}

/// One Kubernetes object with where it came from.
struct Object<'a> {
    yaml: &'a Yaml,
    kind: &'a str,
    document: usize,
    line: Option<usize>,
    item: Option<usize>,
}

impl Object<'_> {
    fn location(&self) -> Location {
        Location::Document {
            document: self.document,
            line: self.line,
            column: None,
            item: self.item,
        }
    }

    fn fail(&self, message: impl Into<String>) -> Failure {
        Failure::at(self.location(), message)
    }
}

/// A Service that can give a workload its address.
struct ServiceSelector {
    name: String,
    namespace: String,
    selector: BTreeMap<String, String>,
}

fn map_documents(documents: &[(usize, Option<usize>, &Yaml)]) -> Result<Parsed, Failure> {
    let objects = collect_objects(documents)?;

    let mut services = Vec::new();
    for object in objects.iter().filter(|o| o.kind == "Service") {
        let selector = string_map(
            path(object.yaml, &["spec", "selector"]),
            "spec.selector",
            object,
        )?;
        if selector.is_empty() {
            continue;
        }
        let Some(name) = str_at(object.yaml, &["metadata", "name"]).filter(|n| !n.is_empty())
        else {
            continue;
        };
        services.push(ServiceSelector {
            name: name.to_string(),
            namespace: namespace_of(object.yaml).to_string(),
            selector,
        });
    }

    let mut mapper = Mapper {
        services: &services,
        drafts: Vec::new(),
        warnings: Vec::new(),
        oversized: BTreeMap::new(),
        workloads: HashMap::new(),
    };
    let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
    let mut workloads = 0usize;
    for object in &objects {
        match object.kind {
            "Deployment" | "StatefulSet" => {
                workloads += 1;
                mapper.workload(object)?;
            }
            other => *skipped.entry(other).or_insert(0) += 1,
        }
    }

    let Mapper {
        drafts,
        mut warnings,
        oversized,
        ..
    } = mapper;
    if workloads == 0 {
        warnings.insert(
            0,
            "no Deployment or StatefulSet found: no instances".to_string(),
        );
    }
    if !skipped.is_empty() {
        let list = skipped
            .iter()
            .map(|(kind, count)| format!("{count} {kind}"))
            .collect::<Vec<_>>()
            .join(", ");
        warnings.push(format!("skipped {list}"));
    }
    for (key, count) in oversized {
        warnings.push(format!(
            "skipped annotation {key} on {}: value over {MAX_ANNOTATION_VALUE} bytes",
            plural(count, "workload")
        ));
    }
    Ok(Parsed {
        format: Format::Kubernetes,
        drafts,
        warnings,
    })
}

/// Every object of every document, with `kind: List` items flattened, in document order.
fn collect_objects<'a>(
    documents: &[(usize, Option<usize>, &'a Yaml)],
) -> Result<Vec<Object<'a>>, Failure> {
    let mut objects = Vec::new();
    for &(document, line, yaml) in documents {
        let top = Object {
            yaml,
            kind: "",
            document,
            line,
            item: None,
        };
        match yaml {
            Yaml::Null | Yaml::BadValue => continue,
            Yaml::Hash(_) => {}
            other => {
                return Err(top.fail(format!(
                    "expected a Kubernetes object (a mapping), found {}",
                    yaml_kind(other)
                )))
            }
        }
        let kind = kind_of(&top)?;
        if kind == "List" || (kind.ends_with("List") && get(yaml, "items").is_some()) {
            let items = match get(yaml, "items") {
                None => continue,
                Some(Yaml::Array(items)) => items,
                Some(other) => {
                    return Err(top.fail(format!(
                        "items must be a sequence, found {}",
                        yaml_kind(other)
                    )))
                }
            };
            for (index, item) in items.iter().enumerate() {
                let mut object = Object {
                    yaml: item,
                    kind: "",
                    document,
                    line,
                    item: Some(index),
                };
                if !matches!(item, Yaml::Hash(_)) {
                    return Err(object.fail(format!(
                        "expected a Kubernetes object (a mapping), found {}",
                        yaml_kind(item)
                    )));
                }
                object.kind = kind_of(&object)?;
                objects.push(object);
            }
        } else {
            objects.push(Object { kind, ..top });
        }
    }
    Ok(objects)
}

fn kind_of<'a>(object: &Object<'a>) -> Result<&'a str, Failure> {
    match get(object.yaml, "kind") {
        Some(Yaml::String(kind)) if !kind.is_empty() => Ok(kind.as_str()),
        None => Err(object.fail("missing kind: not a Kubernetes object")),
        Some(other) => Err(object.fail(format!(
            "kind must be a non-empty string, found {}",
            yaml_kind(other)
        ))),
    }
}

struct Mapper<'s> {
    services: &'s [ServiceSelector],
    drafts: Vec<InstanceDraft>,
    warnings: Vec<String>,
    /// Annotation key → number of workloads where its value was too long.
    oversized: BTreeMap<String, usize>,
    /// `NAMESPACE:NAME` → where that workload was first seen.
    workloads: HashMap<String, Location>,
}

impl Mapper<'_> {
    fn workload(&mut self, object: &Object<'_>) -> Result<(), Failure> {
        let yaml = object.yaml;
        let kind = object.kind;
        let name = match path(yaml, &["metadata", "name"]) {
            Some(Yaml::String(name)) if !name.is_empty() => name.as_str(),
            _ => return Err(object.fail(format!("missing metadata.name in a {kind}"))),
        };
        let namespace = namespace_of(yaml);
        let key = format!("{namespace}:{name}");
        if let Some(first) = self.workloads.get(&key) {
            return Err(object.fail(format!(
                "duplicate workload {key} (first at {first}): instance ids would collide"
            )));
        }
        self.workloads.insert(key.clone(), object.location());

        let replicas = match path(yaml, &["spec", "replicas"]) {
            None => 1,
            Some(Yaml::Integer(n)) if (0..=MAX_REPLICAS).contains(n) => *n,
            Some(Yaml::Integer(n)) if *n > MAX_REPLICAS => {
                return Err(object.fail(format!(
                    "spec.replicas is {n}, more than the import limit of {MAX_REPLICAS}"
                )))
            }
            Some(other) => {
                return Err(object.fail(format!(
                    "spec.replicas must be a non-negative integer, found {}",
                    yaml_desc(other)
                )))
            }
        };

        let workload_labels = string_map(
            path(yaml, &["metadata", "labels"]),
            "metadata.labels",
            object,
        )?;
        let template_labels = string_map(
            path(yaml, &["spec", "template", "metadata", "labels"]),
            "spec.template.metadata.labels",
            object,
        )?;
        let mut used = BTreeSet::new();
        let mut pick = |keys: &[&'static str]| -> Option<String> {
            keys.iter().find_map(|&key| {
                let value = template_labels
                    .get(key)
                    .filter(|v| !v.is_empty())
                    .or_else(|| workload_labels.get(key).filter(|v| !v.is_empty()))?;
                used.insert(key);
                Some(value.clone())
            })
        };
        let service = pick(&SERVICE_LABELS).unwrap_or_else(|| name.to_string());
        let label_version = pick(&VERSION_LABELS);
        // Label values may be upper case; environments and regions are lower-case slugs.
        let environment = pick(&ENVIRONMENT_LABELS).map(|env| env.to_lowercase());
        let region = pick(&REGION_LABELS).map(|region| region.to_lowercase());

        let container = match path(yaml, &["spec", "template", "spec", "containers"]) {
            None => None,
            Some(Yaml::Array(containers)) => containers.first(),
            Some(other) => {
                return Err(object.fail(format!(
                    "spec.template.spec.containers must be a sequence, found {}",
                    yaml_kind(other)
                )))
            }
        };
        let image = match container.and_then(|c| get(c, "image")) {
            None => None,
            Some(Yaml::String(image)) if !image.is_empty() => Some(image.as_str()),
            Some(other) => {
                return Err(object.fail(format!(
                    "containers[0].image must be a non-empty string, found {}",
                    yaml_desc(other)
                )))
            }
        };
        let version = label_version.or_else(|| image.and_then(image_tag).map(str::to_string));
        let port = container_port(container, object)?;

        let address = self
            .services
            .iter()
            .find(|s| {
                s.namespace == namespace
                    && s.selector
                        .iter()
                        .all(|(k, v)| template_labels.get(k) == Some(v))
            })
            .map(|s| format!("{}.{}.svc.cluster.local", s.name, s.namespace))
            .unwrap_or_else(|| name.to_string());

        let mut labels = workload_labels.clone();
        labels.extend(template_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let tags = labels
            .iter()
            .filter(|(key, _)| !used.contains(key.as_str()))
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>();

        let meta = self.meta(object, &key, namespace, name, image)?;

        if replicas == 0 {
            self.warnings.push(format!(
                "{}: {kind} {key} has 0 replicas: no instances",
                object.location()
            ));
        }
        for index in 0..replicas {
            self.drafts.push(InstanceDraft {
                id: format!("{key}-{index}"),
                service: service.clone(),
                address: address.clone(),
                port,
                tags: tags.clone(),
                version: version.clone(),
                environment: environment.clone(),
                region: region.clone(),
                meta: meta.clone(),
                ttl: None,
            });
        }
        Ok(())
    }

    /// Annotations (workload, then pod template, which wins) plus namespace, kind, image and
    /// workload.
    fn meta(
        &mut self,
        object: &Object<'_>,
        key: &str,
        namespace: &str,
        name: &str,
        image: Option<&str>,
    ) -> Result<BTreeMap<String, String>, Failure> {
        // meta key → (annotation key, value)
        let mut annotations: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (at, what) in [
            (&["metadata", "annotations"][..], "metadata.annotations"),
            (
                &["spec", "template", "metadata", "annotations"][..],
                "spec.template.metadata.annotations",
            ),
        ] {
            for (annotation, value) in string_map(path(object.yaml, at), what, object)? {
                if value.len() > MAX_ANNOTATION_VALUE {
                    *self.oversized.entry(annotation).or_insert(0) += 1;
                    continue;
                }
                let meta_key = meta_key(&annotation);
                if let Some((previous, _)) = annotations.get(&meta_key) {
                    if *previous != annotation {
                        self.warnings.push(format!(
                            "{}: annotations {previous} and {annotation} of {key} both map to \
                             meta key {meta_key}: kept the value of {annotation}",
                            object.location()
                        ));
                    }
                }
                annotations.insert(meta_key, (annotation, value));
            }
        }
        let mut meta = annotations
            .into_iter()
            .map(|(meta_key, (_, value))| (meta_key, value))
            .collect::<BTreeMap<_, _>>();
        let mut fixed = vec![
            ("namespace", namespace),
            ("kind", object.kind),
            ("workload", name),
        ];
        if let Some(image) = image {
            fixed.push(("image", image));
        }
        for (field, value) in fixed {
            if meta.insert(field.to_string(), value.to_string()).is_some() {
                self.warnings.push(format!(
                    "{}: an annotation of {key} maps to meta key {field}, which holds the \
                     workload's {field}: the annotation was dropped",
                    object.location()
                ));
            }
        }
        Ok(meta)
    }
}

fn container_port(container: Option<&Yaml>, object: &Object<'_>) -> Result<i64, Failure> {
    let Some(ports) = container.and_then(|c| get(c, "ports")) else {
        return Ok(0);
    };
    let first = match ports {
        Yaml::Array(ports) => ports.first(),
        other => {
            return Err(object.fail(format!(
                "containers[0].ports must be a sequence, found {}",
                yaml_kind(other)
            )))
        }
    };
    match first.and_then(|p| get(p, "containerPort")) {
        None => Ok(0),
        Some(Yaml::Integer(port)) => Ok(*port),
        Some(Yaml::String(text)) => text.trim().parse::<i64>().map_err(|_| {
            object.fail(format!(
                "containers[0].ports[0].containerPort must be an integer, found {}",
                yaml_desc(&Yaml::String(text.clone()))
            ))
        }),
        Some(other) => Err(object.fail(format!(
            "containers[0].ports[0].containerPort must be an integer, found {}",
            yaml_desc(other)
        ))),
    }
}

/// The tag of an image reference: the text after the last `:` that follows the last `/`,
/// ignoring a `@sha256:…` digest. Untagged and digest-only references have none.
pub(super) fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    let last_segment = without_digest
        .rsplit_once('/')
        .map_or(without_digest, |(_, segment)| segment);
    match last_segment.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => Some(tag),
        _ => None,
    }
}

/// An annotation key as a meta key: characters outside `[A-Za-z0-9_.-]` become `_`.
fn meta_key(annotation: &str) -> String {
    annotation
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn namespace_of(yaml: &Yaml) -> &str {
    str_at(yaml, &["metadata", "namespace"])
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default")
}

fn get<'a>(yaml: &'a Yaml, key: &str) -> Option<&'a Yaml> {
    match yaml {
        Yaml::Hash(hash) => match hash.get(&Yaml::String(key.to_string())) {
            None | Some(Yaml::Null) => None,
            Some(value) => Some(value),
        },
        _ => None,
    }
}

fn path<'a>(yaml: &'a Yaml, keys: &[&str]) -> Option<&'a Yaml> {
    keys.iter().try_fold(yaml, |node, key| get(node, key))
}

fn str_at<'a>(yaml: &'a Yaml, keys: &[&str]) -> Option<&'a str> {
    match path(yaml, keys) {
        Some(Yaml::String(text)) => Some(text.as_str()),
        _ => None,
    }
}

/// The text of a scalar as Kubernetes would read it (numbers and booleans as written).
fn scalar_text(yaml: &Yaml) -> Option<String> {
    match yaml {
        Yaml::String(text) | Yaml::Real(text) => Some(text.clone()),
        Yaml::Integer(int) => Some(int.to_string()),
        Yaml::Boolean(flag) => Some(flag.to_string()),
        Yaml::Null => Some(String::new()),
        _ => None,
    }
}

/// A string-to-string mapping such as labels, annotations or a selector.
fn string_map(
    yaml: Option<&Yaml>,
    what: &str,
    object: &Object<'_>,
) -> Result<BTreeMap<String, String>, Failure> {
    let hash = match yaml {
        None => return Ok(BTreeMap::new()),
        Some(Yaml::Hash(hash)) => hash,
        Some(other) => {
            return Err(object.fail(format!(
                "{what} must be a mapping, found {}",
                yaml_kind(other)
            )))
        }
    };
    let mut map = BTreeMap::new();
    for (key, value) in hash {
        let Some(key) = scalar_text(key) else {
            return Err(object.fail(format!("{what} has a key that is {}", yaml_kind(key))));
        };
        let Some(value) = scalar_text(value) else {
            return Err(object.fail(format!(
                "{what}.{key} must be a string, found {}",
                yaml_kind(value)
            )));
        };
        map.insert(key, value);
    }
    Ok(map)
}

fn yaml_kind(yaml: &Yaml) -> &'static str {
    match yaml {
        Yaml::Real(_) => "a number",
        Yaml::Integer(_) => "an integer",
        Yaml::String(_) => "a string",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Array(_) => "a sequence",
        Yaml::Hash(_) => "a mapping",
        Yaml::Alias(_) => "an alias",
        Yaml::Null => "null",
        Yaml::BadValue => "an invalid value",
    }
}

/// A scalar with its value (`the string "three"`), otherwise its kind.
fn yaml_desc(yaml: &Yaml) -> String {
    match yaml {
        Yaml::String(text) => format!("the string {text:?}"),
        Yaml::Real(text) => format!("the number {text}"),
        Yaml::Integer(int) => format!("{int}"),
        Yaml::Boolean(flag) => format!("{flag}"),
        other => yaml_kind(other).to_string(),
    }
}
