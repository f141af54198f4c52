//! [`PgType`]: what a column's type OID means for the mapping. Builtin types are known by OID
//! (their OIDs are fixed across PostgreSQL versions); user-defined ones (enums, domains, arrays
//! of them, extension types such as citext, hstore or geometry) are looked up in `pg_type`.

use tokio_postgres::Client;

use super::TypeError;
use crate::source::Oid;

/// A column type, resolved to what decides its Arrow mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    /// `boolean`.
    Bool,
    /// `smallint` (`int2`).
    Int2,
    /// `integer` (`int4`).
    Int4,
    /// `bigint` (`int8`).
    Int8,
    /// `real` (`float4`).
    Float4,
    /// `double precision` (`float8`).
    Float8,
    /// `numeric`, with or without precision and scale (they are in the column's typmod).
    Numeric,
    /// `text`.
    Text,
    /// `varchar(n)`.
    Varchar,
    /// `char(n)` (`bpchar`): its text keeps the padding.
    Bpchar,
    /// `"char"`, the one-byte internal type.
    Char,
    /// `name`, the catalog's identifier type.
    Name,
    /// `bytea`.
    Bytea,
    /// `date`.
    Date,
    /// `time` (without time zone).
    Time,
    /// `timetz`: no Arrow type keeps its offset, so it is carried as text.
    TimeTz,
    /// `timestamp` (without time zone).
    Timestamp,
    /// `timestamptz`.
    Timestamptz,
    /// `uuid`.
    Uuid,
    /// `json`.
    Json,
    /// `jsonb`.
    Jsonb,
    /// A type carried as its text form: interval, inet, money, bit strings, xml, ranges,
    /// composites, and base types of extensions (citext, hstore, geometry, …).
    TextForm {
        /// Its name, schema-qualified unless it lives in `pg_catalog`.
        name: String,
    },
    /// An enum: carried as its label.
    Enum {
        /// Its schema-qualified name.
        name: String,
    },
    /// A domain: mapped as its base type.
    Domain {
        /// Its schema-qualified name.
        name: String,
        /// The type it constrains.
        base: Box<PgType>,
        /// The base type's modifier the domain declares (`-1` for none): a column of a domain
        /// over `numeric(10,2)` has typmod `-1` itself.
        typmod: i32,
    },
    /// A one-dimensional array: a list of its element type.
    Array {
        /// The element type.
        element: Box<PgType>,
        /// The separator between elements in the array's text (`,` for every type but `box`).
        delimiter: u8,
    },
}

/// `oid`'s builtin scalar type, from the fixed OIDs of `pg_type.dat`.
fn builtin_scalar(oid: u32) -> Option<PgType> {
    let text_form = |name: &str| Some(PgType::TextForm { name: name.into() });
    match oid {
        16 => Some(PgType::Bool),
        17 => Some(PgType::Bytea),
        18 => Some(PgType::Char),
        19 => Some(PgType::Name),
        20 => Some(PgType::Int8),
        21 => Some(PgType::Int2),
        23 => Some(PgType::Int4),
        25 => Some(PgType::Text),
        114 => Some(PgType::Json),
        700 => Some(PgType::Float4),
        701 => Some(PgType::Float8),
        1042 => Some(PgType::Bpchar),
        1043 => Some(PgType::Varchar),
        1082 => Some(PgType::Date),
        1083 => Some(PgType::Time),
        1114 => Some(PgType::Timestamp),
        1184 => Some(PgType::Timestamptz),
        1266 => Some(PgType::TimeTz),
        1700 => Some(PgType::Numeric),
        2950 => Some(PgType::Uuid),
        3802 => Some(PgType::Jsonb),
        // Vectors print as space-separated lists, not array literals, though the catalog files
        // them in the array category: they are text.
        22 => text_form("int2vector"),
        30 => text_form("oidvector"),
        26 => text_form("oid"),
        142 => text_form("xml"),
        650 => text_form("cidr"),
        774 => text_form("macaddr8"),
        790 => text_form("money"),
        829 => text_form("macaddr"),
        869 => text_form("inet"),
        1186 => text_form("interval"),
        1560 => text_form("bit"),
        1562 => text_form("varbit"),
        3220 => text_form("pg_lsn"),
        3614 => text_form("tsvector"),
        3615 => text_form("tsquery"),
        _ => None,
    }
}

/// The element OID of a builtin array type (`_int4` → `int4`) whose element is a builtin
/// scalar above. `box[]`, whose elements are separated by `;`, goes through the catalog.
fn builtin_array_element(oid: u32) -> Option<u32> {
    let element = match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1016 => 20,
        1005 => 21,
        1007 => 23,
        1009 => 25,
        199 => 114,
        1021 => 700,
        1022 => 701,
        1014 => 1042,
        1015 => 1043,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1270 => 1266,
        1231 => 1700,
        2951 => 2950,
        3807 => 3802,
        1028 => 26,
        143 => 142,
        651 => 650,
        775 => 774,
        791 => 790,
        1040 => 829,
        1041 => 869,
        1187 => 1186,
        1561 => 1560,
        1563 => 1562,
        3221 => 3220,
        3643 => 3614,
        3645 => 3615,
        _ => return None,
    };
    Some(element)
}

impl PgType {
    /// The builtin type of `oid`, or `None` when only the catalog knows it.
    pub fn builtin(oid: Oid) -> Option<PgType> {
        if let Some(scalar) = builtin_scalar(oid.0) {
            return Some(scalar);
        }
        let element = builtin_scalar(builtin_array_element(oid.0)?)?;
        Some(PgType::Array {
            element: Box::new(element),
            delimiter: b',',
        })
    }

    /// The type as a person reads it, with the column's modifier: `integer`, `numeric(10,2)`,
    /// `varchar(20)`, `timestamptz(3)`, `public.mood (enum)`, `text[]`.
    pub fn describe(&self, typmod: i32) -> String {
        let with_length = |name: &str, header: i32| {
            if typmod >= header {
                format!("{name}({})", typmod - header)
            } else {
                name.to_string()
            }
        };
        match self {
            PgType::Bool => "boolean".into(),
            PgType::Int2 => "smallint".into(),
            PgType::Int4 => "integer".into(),
            PgType::Int8 => "bigint".into(),
            PgType::Float4 => "real".into(),
            PgType::Float8 => "double precision".into(),
            PgType::Numeric => match numeric_typmod(typmod) {
                Some((precision, scale)) => format!("numeric({precision},{scale})"),
                None => "numeric".into(),
            },
            PgType::Text => "text".into(),
            PgType::Varchar => with_length("varchar", 4),
            PgType::Bpchar => with_length("char", 4),
            PgType::Char => "\"char\"".into(),
            PgType::Name => "name".into(),
            PgType::Bytea => "bytea".into(),
            PgType::Date => "date".into(),
            PgType::Time => with_length("time", 0),
            PgType::TimeTz => with_length("timetz", 0),
            PgType::Timestamp => with_length("timestamp", 0),
            PgType::Timestamptz => with_length("timestamptz", 0),
            PgType::Uuid => "uuid".into(),
            PgType::Json => "json".into(),
            PgType::Jsonb => "jsonb".into(),
            PgType::TextForm { name } => name.clone(),
            PgType::Enum { name } => format!("{name} (enum)"),
            PgType::Domain {
                name,
                base,
                typmod: domain_typmod,
            } => {
                let typmod = if typmod >= 0 { typmod } else { *domain_typmod };
                format!("{name} (domain over {})", base.describe(typmod))
            }
            PgType::Array { element, .. } => format!("{}[]", element.describe(typmod)),
        }
    }
}

/// Precision and scale of a `numeric` typmod, or `None` for an unconstrained numeric. The scale
/// is an 11-bit signed field: PostgreSQL 15 allows negative scales and scales above the
/// precision.
pub(super) fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    // The typmod counts a 4-byte varlena header, so anything below 4 means "none".
    if typmod < 4 {
        return None;
    }
    let packed = typmod - 4;
    let precision = (packed >> 16) & 0xffff;
    let scale = ((packed & 0x7ff) ^ 1024) - 1024;
    Some((precision, scale))
}

/// Domains over domains are allowed, but a chain this deep means a corrupt catalog answer.
const MAX_DEPTH: u32 = 16;

/// Resolves a type OID: builtin types from their fixed OIDs, without a query; everything else
/// from `pg_type` (one query per level: a domain's base, an array's element). The caller keeps
/// the result per OID; pgoutput's Relation messages say when a table's types change.
pub async fn resolve_type(client: &Client, oid: Oid) -> Result<PgType, TypeError> {
    resolve_at_depth(client, oid, 0).await
}

async fn resolve_at_depth(client: &Client, oid: Oid, depth: u32) -> Result<PgType, TypeError> {
    if let Some(builtin) = PgType::builtin(oid) {
        return Ok(builtin);
    }
    // The element's delimiter is what array_out writes between elements.
    const QUERY: &str = "SELECT t.typtype, t.typcategory, t.typbasetype, t.typelem, t.typlen, \
                         t.typtypmod, t.typname::text, n.nspname::text, e.typdelim \
                         FROM pg_catalog.pg_type t \
                         JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
                         LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem \
                         WHERE t.oid = $1";
    let catalog = |source| TypeError::Catalog { oid, source };
    let row = client
        .query_opt(QUERY, &[&oid.0])
        .await
        .map_err(catalog)?
        .ok_or(TypeError::UnknownOid { oid })?;
    let typtype: i8 = row.try_get(0).map_err(catalog)?;
    let typcategory: i8 = row.try_get(1).map_err(catalog)?;
    let base: u32 = row.try_get(2).map_err(catalog)?;
    let element: u32 = row.try_get(3).map_err(catalog)?;
    let typlen: i16 = row.try_get(4).map_err(catalog)?;
    let typtypmod: i32 = row.try_get(5).map_err(catalog)?;
    let typname: String = row.try_get(6).map_err(catalog)?;
    let schema: String = row.try_get(7).map_err(catalog)?;
    let element_delimiter: Option<i8> = row.try_get(8).map_err(catalog)?;
    let name = if schema == "pg_catalog" {
        typname
    } else {
        format!("{schema}.{typname}")
    };
    if depth >= MAX_DEPTH {
        return Err(TypeError::BadCatalogEntry {
            oid,
            name,
            reason: "domain or array nesting deeper than PostgreSQL allows",
        });
    }
    // "char" columns come back as i8; the catalog's codes are ASCII letters.
    match typtype as u8 {
        b'd' => {
            let base = Box::pin(resolve_at_depth(client, Oid(base), depth + 1)).await?;
            Ok(PgType::Domain {
                name,
                base: Box::new(base),
                typmod: typtypmod,
            })
        }
        b'e' => Ok(PgType::Enum { name }),
        b'b' if typcategory as u8 == b'A' && element != 0 && typlen == -1 => {
            let element_type = Box::pin(resolve_at_depth(client, Oid(element), depth + 1)).await?;
            Ok(PgType::Array {
                element: Box::new(element_type),
                delimiter: element_delimiter.map_or(b',', |d| d as u8),
            })
        }
        b'p' => Err(TypeError::BadCatalogEntry {
            oid,
            name,
            reason: "a pseudo-type cannot be a column's type",
        }),
        // Base types of extensions (citext, hstore, geometry), composites, ranges and
        // multiranges: their text form is their only portable representation.
        _ => Ok(PgType::TextForm { name }),
    }
}
