//! Parses one manifest file (YAML with any number of documents, or JSON; `kind: List` allowed)
//! into the objects the proxy reads: v1 Service, discovery.k8s.io/v1 EndpointSlice and v1 Node.
//! Other kinds are skipped. Each object is converted and validated on its own, so one bad object
//! never hides the others.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::model::convert::{self, Converted, InvalidObject, InvalidReason};
use crate::model::net::printable;
use crate::model::{Object, ObjectId};

/// Largest manifest file read (bigger files are refused as a whole).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Deepest `kind: List` nesting followed.
const MAX_LIST_DEPTH: usize = 4;

/// Why a file could not be parsed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("not UTF-8 text")]
    Encoding,
    #[error("larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
}

/// One supported object found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: ObjectId,
    pub outcome: Outcome,
}

/// What became of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Valid(Object),
    Ignored(&'static str),
    Invalid(InvalidObject),
}

/// The format of a manifest file, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// serde-saphyr's limits, scaled to the file. Its defaults (1,024 documents, 250,000 nodes,
/// 1,000,000 events) refuse ordinary files of a few MiB, far below [`MAX_FILE_BYTES`]. Every
/// document, node and event takes input bytes except those an alias replays, so these limits keep
/// the work linear in the file's size, while the alias limits keep "billion laughs" refused.
fn yaml_options(len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = budget.max_documents.max(len / 8);
    budget.max_nodes = budget.max_nodes.max(len / 2);
    budget.max_events = budget.max_events.max(len);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parses a whole file.
pub fn parse(bytes: &[u8], format: Format) -> Result<Vec<Found>, ManifestError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ManifestError::TooLarge);
    }
    let docs: Vec<Document> = match format {
        Format::Json => {
            vec![serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?]
        }
        Format::Yaml => {
            let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::Encoding)?;
            serde_saphyr::from_multiple_with_options(text, yaml_options(text.len()))
                .map_err(|e| ManifestError::Yaml(e.to_string()))?
        }
    };
    Ok(docs.into_iter().flat_map(|d| d.0).collect())
}

/// The objects of one document. A `kind: List` document's items are converted one at a time
/// while it is read, so a large list never exists as a whole `Value` tree; any other document is
/// read as a `Value` and converted.
struct Document(Vec<Found>);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Document, D::Error> {
        d.deserialize_any(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
        let mut fields = serde_json::Map::new();
        let mut items = Vec::new();
        let mut saw_items = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" && !saw_items {
                saw_items = true;
                items = map.next_value_seed(Items)?;
            } else {
                let value: Value = map.next_value()?;
                fields.insert(key, value);
            }
        }
        let field = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or("");
        if (field("apiVersion"), field("kind")) == ("v1", "List") {
            return Ok(Document(items));
        }
        // Not a list: an object of its own (an `items` field means nothing to the kinds we read).
        let mut found = Vec::new();
        collect(Value::Object(fields), 0, &mut found);
        Ok(Document(found))
    }

    // Scalars and sequences at the top of a document hold no objects.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Document, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Document(Vec::new()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Document, E> {
        Ok(Document(Vec::new()))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Document, E> {
        Ok(Document(Vec::new()))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Document, E> {
        Ok(Document(Vec::new()))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Document, E> {
        Ok(Document(Vec::new()))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Document, E> {
        Ok(Document(Vec::new()))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Document, E> {
        Ok(Document(Vec::new()))
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Document, E> {
        Ok(Document(Vec::new()))
    }
}

/// The `items` of a list, each converted as soon as it is read.
struct Items;

impl<'de> DeserializeSeed<'de> for Items {
    type Value = Vec<Found>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Found>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items {
    type Value = Vec<Found>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Found>, A::Error> {
        let mut found = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            collect(item, 1, &mut found);
        }
        Ok(found)
    }

    // `items: null` (or anything but a sequence) holds nothing.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Found>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Vec::new())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Vec<Found>, E> {
        Ok(Vec::new())
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Vec<Found>, E> {
        Ok(Vec::new())
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Vec<Found>, E> {
        Ok(Vec::new())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Vec<Found>, E> {
        Ok(Vec::new())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Vec<Found>, E> {
        Ok(Vec::new())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Vec<Found>, E> {
        Ok(Vec::new())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Vec<Found>, E> {
        Ok(Vec::new())
    }
}

fn collect(doc: Value, depth: usize, found: &mut Vec<Found>) {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    match (api_version, kind) {
        ("v1", "List") if depth < MAX_LIST_DEPTH => {
            if let Value::Object(mut map) = doc
                && let Some(Value::Array(items)) = map.remove("items")
            {
                for item in items {
                    collect(item, depth + 1, found);
                }
            }
        }
        ("v1", "Service") => found.push(service(doc)),
        ("discovery.k8s.io/v1", "EndpointSlice") => found.push(endpoint_slice(doc)),
        ("v1", "Node") => found.push(node(doc)),
        _ => {}
    }
}

/// The identity from `metadata`, readable even when the rest does not fit the type.
fn raw_id(doc: &Value, kind: &str) -> ObjectId {
    let meta = doc.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let name = field("name").unwrap_or_default();
    let namespace = field("namespace").unwrap_or_else(|| "default".into());
    match kind {
        "Service" => ObjectId::Service { namespace, name },
        "EndpointSlice" => ObjectId::EndpointSlice { namespace, name },
        _ => ObjectId::Node { name },
    }
}

/// Deserializes into the API type; a mismatch names the path of the field at fault.
fn typed<T: serde::de::DeserializeOwned>(doc: Value, id: &ObjectId) -> Result<T, Box<Found>> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        Box::new(Found {
            id: id.clone(),
            outcome: Outcome::Invalid(InvalidObject {
                id: id.clone(),
                reason: InvalidReason::Field,
                field: printable(&e.path().to_string()),
                detail: printable(&e.inner().to_string()),
            }),
        })
    })
}

fn outcome<T>(
    result: Result<Converted<T>, InvalidObject>,
    wrap: impl FnOnce(T) -> Object,
) -> Outcome {
    match result {
        Ok(Converted::Proxied(o)) => Outcome::Valid(wrap(o)),
        Ok(Converted::Ignored(why)) => Outcome::Ignored(why),
        Err(e) => Outcome::Invalid(e),
    }
}

fn service(doc: Value) -> Found {
    let id = raw_id(&doc, "Service");
    match typed::<core::Service>(doc, &id) {
        Ok(svc) => Found {
            id: convert::service_id(&svc),
            outcome: outcome(convert::service(&svc), |s| Object::Service(s.into())),
        },
        Err(found) => *found,
    }
}

fn endpoint_slice(doc: Value) -> Found {
    let id = raw_id(&doc, "EndpointSlice");
    match typed::<discovery::EndpointSlice>(doc, &id) {
        Ok(slice) => Found {
            id: convert::slice_id(&slice),
            outcome: outcome(convert::endpoint_slice(&slice), |s| {
                Object::EndpointSlice(s.into())
            }),
        },
        Err(found) => *found,
    }
}

fn node(doc: Value) -> Found {
    let id = raw_id(&doc, "Node");
    match typed::<core::Node>(doc, &id) {
        Ok(n) => Found {
            id: convert::node_id(&n),
            outcome: match convert::node(&n) {
                Ok(n) => Outcome::Valid(Object::Node(n.into())),
                Err(e) => Outcome::Invalid(e),
            },
        },
        Err(found) => *found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = r#"
# a comment
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}]
---
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: v1
kind: List
items:
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-1
    namespace: shop
    labels: {kubernetes.io/service-name: web}
  addressType: IPv4
  ports: [{name: http, port: 8080}]
  endpoints: [{addresses: ["10.244.0.5"]}]
- apiVersion: v1
  kind: Node
  metadata: {name: node-a}
"#;

    #[test]
    fn multi_document_yaml_and_lists() {
        let found = parse(MIXED.as_bytes(), Format::Yaml).unwrap();
        let kinds: Vec<_> = found.iter().map(|f| f.id.kind()).collect();
        assert_eq!(kinds, ["Service", "EndpointSlice", "Node"]);
        assert!(found.iter().all(|f| matches!(f.outcome, Outcome::Valid(_))));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_an_invalid_object_with_its_path() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: eighty}]}\n";
        let found = parse(yaml.as_bytes(), Format::Yaml).unwrap();
        let Outcome::Invalid(e) = &found[0].outcome else {
            panic!("{found:?}")
        };
        assert_eq!(e.field, "spec.ports[0].port");
        assert_eq!(found[0].id.to_string(), "Service default/web");
    }

    #[test]
    fn unparseable_files_are_errors() {
        assert!(matches!(
            parse(b"a: [1, 2", Format::Yaml),
            Err(ManifestError::Yaml(_))
        ));
        assert!(matches!(
            parse(b"{\"a\": ", Format::Json),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            parse(&[0xff, 0xfe], Format::Yaml),
            Err(ManifestError::Encoding)
        ));
    }

    #[test]
    fn json_files() {
        let json = br#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
                        "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}"#;
        let found = parse(json, Format::Json).unwrap();
        assert!(matches!(found[0].outcome, Outcome::Ignored(_)));
    }

    #[test]
    fn list_items_are_read_whatever_the_field_order() {
        let item = |name: &str| {
            format!(
                r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "{name}", "namespace": "x"}},
                    "spec": {{"clusterIP": "10.96.0.1", "ports": [{{"port": 80}}]}}}}"#
            )
        };
        let items_first = format!(
            r#"{{"items": [{}, {}], "kind": "List", "apiVersion": "v1"}}"#,
            item("a"),
            item("b")
        );
        let found = parse(items_first.as_bytes(), Format::Json).unwrap();
        let names: Vec<String> = found.iter().map(|f| f.id.to_string()).collect();
        assert_eq!(names, ["Service x/a", "Service x/b"]);
        // Items of something that is not a List are not objects of ours.
        let not_a_list = format!(
            r#"{{"apiVersion": "v1", "kind": "ConfigMap", "items": [{}]}}"#,
            item("c")
        );
        assert!(
            parse(not_a_list.as_bytes(), Format::Json)
                .unwrap()
                .is_empty()
        );
        // A nested List, and `items: null`.
        let nested = format!(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: [{}]\n---\napiVersion: v1\nkind: List\nitems: null\n",
            item("d")
        );
        let found = parse(nested.as_bytes(), Format::Yaml).unwrap();
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn yaml_bombs_are_refused() {
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
        assert!(parse(bomb.as_bytes(), Format::Yaml).is_err());
    }
}
