//! A staged commit as REST requirements and updates: the writer builds the table's next
//! metadata itself (as for every catalog), and a REST server wants the change, not the file. The
//! difference between the metadata the change was staged on and the staged metadata becomes
//! `updates`, and what it was staged on becomes `requirements`, as Iceberg's Java
//! `UpdateRequirements` derives them — so the server applies exactly the writer's change, or
//! refuses it as a conflict when the table moved.
//!
//! A difference no update can say (a new table uuid or location, a format upgrade, schemas or
//! specs removed, statistics) is refused by name rather than dropped.

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::{MAIN_BRANCH, SnapshotReference, TableMetadata};
use iceberg::{TableRequirement, TableUpdate};

/// The `set-current-schema` / `set-default-spec` / `set-default-sort-order` id meaning "the
/// one added by this commit": the server numbers what is added, so the writer's own numbers
/// are not sent as the ones to select.
const LAST_ADDED: i32 = -1;

/// One commit as the REST protocol sends it, and how to recognise it in the table later.
#[derive(Debug, Clone)]
pub(crate) struct TableChange {
    /// What the table must still be for the updates to apply.
    pub requirements: Vec<TableRequirement>,
    /// The change, in the order the server applies it.
    pub updates: Vec<TableUpdate>,
    /// What the change leaves in the table, to tell whether it landed.
    mark: Mark,
}

/// What a commit leaves behind: its newest snapshot (snapshot ids are random 63-bit numbers,
/// chosen by the writer per commit, so a table holding it holds the commit), or, for a commit
/// adding none, the state it sets.
#[derive(Debug, Clone)]
struct Mark {
    added_snapshot: Option<i64>,
    removed_snapshots: Vec<i64>,
    schema: Option<iceberg::spec::Schema>,
    set_properties: HashMap<String, String>,
    removed_properties: Vec<String>,
}

/// Why a staged change cannot be sent as REST updates: the difference, named for an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inexpressible(pub String);

impl TableChange {
    /// The change from `base` (the table as the commit read it) to `staged` (what the writer
    /// built on it).
    pub(crate) fn between(
        base: &TableMetadata,
        staged: &TableMetadata,
    ) -> Result<TableChange, Inexpressible> {
        let refuse = |what: String| Err(Inexpressible(what));
        if base.uuid() != staged.uuid() {
            return refuse(format!(
                "the table uuid (from {} to {})",
                base.uuid(),
                staged.uuid()
            ));
        }
        // a format version only goes up (`delete_mode = "deletion_vector"` upgrades 2 to 3)
        if base.format_version() > staged.format_version() {
            return refuse(format!(
                "the format version (from {} to {})",
                base.format_version(),
                staged.format_version()
            ));
        }
        if base.location() != staged.location() {
            return refuse(format!(
                "the table location (from {} to {})",
                base.location(),
                staged.location()
            ));
        }

        let mut requirements = vec![TableRequirement::UuidMatch { uuid: base.uuid() }];
        let mut updates = Vec::new();
        if staged.format_version() > base.format_version() {
            updates.push(TableUpdate::UpgradeFormatVersion {
                format_version: staged.format_version(),
            });
        }

        // schemas
        let added_schemas: Vec<_> = sorted_by_key(
            staged
                .schemas_iter()
                .filter(|s| base.schema_by_id(s.schema_id()).is_none()),
            |s| s.schema_id(),
        );
        if let Some(gone) = base
            .schemas_iter()
            .find(|s| staged.schema_by_id(s.schema_id()).is_none())
        {
            return refuse(format!("schema {} removed", gone.schema_id()));
        }
        if let Some(changed) = staged.schemas_iter().find(|s| {
            base.schema_by_id(s.schema_id())
                .is_some_and(|b| b.as_ref() != s.as_ref())
        }) {
            return refuse(format!("schema {} changed in place", changed.schema_id()));
        }
        if !added_schemas.is_empty() {
            requirements.push(TableRequirement::LastAssignedFieldIdMatch {
                last_assigned_field_id: base.last_column_id(),
            });
        }
        for schema in &added_schemas {
            updates.push(TableUpdate::AddSchema {
                schema: schema.as_ref().clone(),
            });
        }
        let current_schema = staged.current_schema_id();
        let schema_changed = current_schema != base.current_schema_id();
        if schema_changed {
            requirements.push(TableRequirement::CurrentSchemaIdMatch {
                current_schema_id: base.current_schema_id(),
            });
            let last_added = added_schemas.last().map(|s| s.schema_id());
            updates.push(TableUpdate::SetCurrentSchema {
                schema_id: if last_added == Some(current_schema) {
                    LAST_ADDED
                } else if added_schemas
                    .iter()
                    .any(|s| s.schema_id() == current_schema)
                {
                    return refuse(format!(
                        "the current schema to {current_schema}, added before another new one"
                    ));
                } else {
                    current_schema
                },
            });
        }

        // partition specs
        let added_specs: Vec<_> = sorted_by_key(
            staged
                .partition_specs_iter()
                .filter(|s| base.partition_spec_by_id(s.spec_id()).is_none()),
            |s| s.spec_id(),
        );
        if let Some(gone) = base
            .partition_specs_iter()
            .find(|s| staged.partition_spec_by_id(s.spec_id()).is_none())
        {
            return refuse(format!("partition spec {} removed", gone.spec_id()));
        }
        if !added_specs.is_empty() {
            requirements.push(TableRequirement::LastAssignedPartitionIdMatch {
                last_assigned_partition_id: base.last_partition_id(),
            });
        }
        for spec in &added_specs {
            updates.push(TableUpdate::AddSpec {
                spec: spec.as_ref().clone().into(),
            });
        }
        let default_spec = staged.default_partition_spec_id();
        if default_spec != base.default_partition_spec_id() {
            requirements.push(TableRequirement::DefaultSpecIdMatch {
                default_spec_id: base.default_partition_spec_id(),
            });
            let last_added = added_specs.last().map(|s| s.spec_id());
            updates.push(TableUpdate::SetDefaultSpec {
                spec_id: if last_added == Some(default_spec) {
                    LAST_ADDED
                } else if added_specs.iter().any(|s| s.spec_id() == default_spec) {
                    return refuse(format!(
                        "the default partition spec to {default_spec}, added before another"
                    ));
                } else {
                    default_spec
                },
            });
        }

        // sort orders
        let added_orders: Vec<_> = sorted_by_key(
            staged
                .sort_orders_iter()
                .filter(|o| base.sort_order_by_id(o.order_id).is_none()),
            |o| o.order_id,
        );
        if let Some(gone) = base
            .sort_orders_iter()
            .find(|o| staged.sort_order_by_id(o.order_id).is_none())
        {
            return refuse(format!("sort order {} removed", gone.order_id));
        }
        for order in &added_orders {
            updates.push(TableUpdate::AddSortOrder {
                sort_order: order.as_ref().clone(),
            });
        }
        let default_order = staged.default_sort_order_id();
        if default_order != base.default_sort_order_id() {
            requirements.push(TableRequirement::DefaultSortOrderIdMatch {
                default_sort_order_id: base.default_sort_order_id(),
            });
            let last_added = added_orders.last().map(|o| o.order_id);
            updates.push(TableUpdate::SetDefaultSortOrder {
                sort_order_id: if last_added == Some(default_order) {
                    i64::from(LAST_ADDED)
                } else if added_orders.iter().any(|o| o.order_id == default_order) {
                    return refuse(format!(
                        "the default sort order to {default_order}, added before another"
                    ));
                } else {
                    default_order
                },
            });
        }

        // snapshots, oldest first: each one's parent is in the table when it is added
        let added_snapshots: Vec<_> = sorted_by_key(
            staged
                .snapshots()
                .filter(|s| base.snapshot_by_id(s.snapshot_id()).is_none()),
            |s| (s.sequence_number(), s.timestamp_ms()),
        );
        for snapshot in &added_snapshots {
            updates.push(TableUpdate::AddSnapshot {
                snapshot: snapshot.as_ref().clone(),
            });
        }
        let removed_snapshots: Vec<i64> = sorted_by_key(
            base.snapshots()
                .map(|s| s.snapshot_id())
                .filter(|id| staged.snapshot_by_id(*id).is_none()),
            |id| *id,
        );

        // references: main is always asserted, so a commit on a table another writer moved
        // is refused whatever it changes
        let base_refs = refs(base)?;
        let staged_refs = refs(staged)?;
        let main_of = |refs: &BTreeMap<String, SnapshotReference>| {
            refs.get(MAIN_BRANCH).map(|r| r.snapshot_id)
        };
        requirements.push(TableRequirement::RefSnapshotIdMatch {
            r#ref: MAIN_BRANCH.to_string(),
            snapshot_id: main_of(&base_refs),
        });
        if main_of(&base_refs).is_some() && main_of(&staged_refs).is_none() {
            return refuse("the main branch removed".to_string());
        }
        for (name, reference) in &staged_refs {
            if base_refs.get(name) == Some(reference) {
                continue;
            }
            if name != MAIN_BRANCH {
                requirements.push(TableRequirement::RefSnapshotIdMatch {
                    r#ref: name.clone(),
                    snapshot_id: base_refs.get(name).map(|r| r.snapshot_id),
                });
            }
            updates.push(TableUpdate::SetSnapshotRef {
                ref_name: name.clone(),
                reference: reference.clone(),
            });
        }
        for (name, reference) in &base_refs {
            if staged_refs.contains_key(name) {
                continue;
            }
            requirements.push(TableRequirement::RefSnapshotIdMatch {
                r#ref: name.clone(),
                snapshot_id: Some(reference.snapshot_id),
            });
            updates.push(TableUpdate::RemoveSnapshotRef {
                ref_name: name.clone(),
            });
        }
        if !removed_snapshots.is_empty() {
            updates.push(TableUpdate::RemoveSnapshots {
                snapshot_ids: removed_snapshots.clone(),
            });
        }

        // statistics of the snapshots that stay: removing a snapshot removes its own
        let kept = |id: i64| staged.snapshot_by_id(id).is_some();
        let statistics = |m: &TableMetadata| {
            let mut files: Vec<_> = m
                .statistics_iter()
                .filter(|s| kept(s.snapshot_id))
                .cloned()
                .collect();
            files.sort_by_key(|s| s.snapshot_id);
            files
        };
        if statistics(base) != statistics(staged) {
            return refuse("the statistics files".to_string());
        }
        let partition_statistics = |m: &TableMetadata| {
            let mut files: Vec<_> = m
                .partition_statistics_iter()
                .filter(|s| kept(s.snapshot_id))
                .cloned()
                .collect();
            files.sort_by_key(|s| s.snapshot_id);
            files
        };
        if partition_statistics(base) != partition_statistics(staged) {
            return refuse("the partition statistics files".to_string());
        }

        // properties
        let set_properties: HashMap<String, String> = staged
            .properties()
            .iter()
            .filter(|(k, v)| base.properties().get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let removed_properties: Vec<String> = sorted_by_key(
            base.properties()
                .keys()
                .filter(|k| !staged.properties().contains_key(*k))
                .cloned(),
            |k| k.clone(),
        );
        if !set_properties.is_empty() {
            updates.push(TableUpdate::SetProperties {
                updates: set_properties.clone(),
            });
        }
        if !removed_properties.is_empty() {
            updates.push(TableUpdate::RemoveProperties {
                removals: removed_properties.clone(),
            });
        }

        Ok(TableChange {
            requirements,
            updates,
            mark: Mark {
                added_snapshot: added_snapshots.last().map(|s| s.snapshot_id()),
                removed_snapshots,
                schema: schema_changed.then(|| staged.current_schema().as_ref().clone()),
                set_properties,
                removed_properties,
            },
        })
    }

    /// Whether `metadata` (the table reloaded after a commit whose answer was lost) holds
    /// this change: its snapshot when it adds one, else everything it sets.
    pub(crate) fn landed_in(&self, metadata: &TableMetadata) -> bool {
        let mark = &self.mark;
        if let Some(id) = mark.added_snapshot {
            return metadata.snapshot_by_id(id).is_some();
        }
        mark.removed_snapshots
            .iter()
            .all(|id| metadata.snapshot_by_id(*id).is_none())
            && mark
                .schema
                .as_ref()
                .is_none_or(|schema| metadata.current_schema().as_struct() == schema.as_struct())
            && mark
                .set_properties
                .iter()
                .all(|(k, v)| metadata.properties().get(k) == Some(v))
            && mark
                .removed_properties
                .iter()
                .all(|k| !metadata.properties().contains_key(k))
    }

    /// Whether the change changes nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }
}

fn sorted_by_key<T, K: Ord>(items: impl Iterator<Item = T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut items: Vec<T> = items.collect();
    items.sort_by_key(|item| key(item));
    items
}

/// The table's branches and tags. iceberg 0.10.1 keeps them private but writes them in the
/// metadata's JSON form, which is read back here.
fn refs(metadata: &TableMetadata) -> Result<BTreeMap<String, SnapshotReference>, Inexpressible> {
    let json = serde_json::to_value(metadata)
        .map_err(|e| Inexpressible(format!("the references (unreadable: {e})")))?;
    match json.get("refs") {
        None | Some(serde_json::Value::Null) => Ok(BTreeMap::new()),
        Some(refs) => serde_json::from_value(refs.clone())
            .map_err(|e| Inexpressible(format!("the references (unreadable: {e})"))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use iceberg::spec::{
        FormatVersion, NestedField, Operation, PartitionSpec, PrimitiveType, Schema, Snapshot,
        SortOrder, Summary, TableMetadataBuilder, Transform, Type, UnboundPartitionSpec,
    };

    use super::*;

    fn schema(columns: &[(i32, &str)]) -> Schema {
        Schema::builder()
            .with_fields(columns.iter().map(|(id, name)| {
                NestedField::required(*id, *name, Type::Primitive(PrimitiveType::Long)).into()
            }))
            .with_identifier_field_ids([1])
            .build()
            .expect("a valid schema")
    }

    fn table() -> TableMetadata {
        TableMetadataBuilder::new(
            schema(&[(1, "id"), (2, "amount")]),
            PartitionSpec::unpartition_spec(),
            SortOrder::unsorted_order(),
            "/warehouse/lakewriter/orders".to_string(),
            FormatVersion::V2,
            HashMap::from([("owner".to_string(), "lakewriter".to_string())]),
        )
        .expect("a valid table")
        .build()
        .expect("a valid table")
        .metadata
    }

    fn snapshot(metadata: &TableMetadata, id: i64, lsn: &str) -> Snapshot {
        Snapshot::builder()
            .with_snapshot_id(id)
            .with_parent_snapshot_id(metadata.current_snapshot_id())
            .with_sequence_number(metadata.next_sequence_number())
            .with_timestamp_ms(metadata.last_updated_ms() + 1)
            .with_manifest_list(format!(
                "/warehouse/lakewriter/orders/metadata/snap-{id}.avro"
            ))
            .with_summary(Summary {
                operation: Operation::Append,
                additional_properties: HashMap::from([(
                    "lakewriter.lsn".to_string(),
                    lsn.to_string(),
                )]),
            })
            .with_schema_id(metadata.current_schema_id())
            .build()
    }

    fn commit(metadata: &TableMetadata, id: i64, lsn: &str) -> TableMetadata {
        let snapshot = snapshot(metadata, id, lsn);
        metadata
            .clone()
            .into_builder(None)
            .set_branch_snapshot(snapshot, MAIN_BRANCH)
            .and_then(|b| b.build())
            .expect("a valid commit")
            .metadata
    }

    /// What the reference does with the change: checks the requirements on `base` and
    /// applies the updates to it, as iceberg's own `TableCommit::apply` does (and as the Java
    /// server does with the same JSON).
    fn apply(base: &TableMetadata, change: &TableChange) -> TableMetadata {
        for requirement in &change.requirements {
            requirement
                .check(Some(base))
                .unwrap_or_else(|e| panic!("{requirement:?} fails on its own base: {e}"));
        }
        let mut builder = base.clone().into_builder(None);
        for update in &change.updates {
            builder = update
                .clone()
                .apply(builder)
                .unwrap_or_else(|e| panic!("{update:?} does not apply: {e}"));
        }
        builder.build().expect("the updates build").metadata
    }

    /// The parts of a table a commit decides (the server owns the logs and timestamps).
    fn same_table(a: &TableMetadata, b: &TableMetadata) {
        let ids = |m: &TableMetadata| {
            let mut s: Vec<_> = m.snapshots().map(|s| s.as_ref().clone()).collect();
            s.sort_by_key(|s| s.snapshot_id());
            s
        };
        assert_eq!(ids(a), ids(b));
        assert_eq!(a.current_snapshot_id(), b.current_snapshot_id());
        assert_eq!(a.current_schema(), b.current_schema());
        assert_eq!(a.last_column_id(), b.last_column_id());
        assert_eq!(a.default_partition_spec(), b.default_partition_spec());
        assert_eq!(a.properties(), b.properties());
        assert_eq!(a.last_sequence_number(), b.last_sequence_number());
        assert_eq!(refs(a), refs(b));
    }

    fn wire(change: &TableChange) -> serde_json::Value {
        serde_json::json!({
            "requirements": change.requirements,
            "updates": change.updates,
        })
    }

    #[test]
    fn a_new_snapshot_is_added_and_made_main_on_the_snapshot_it_was_staged_on() {
        let base = commit(&table(), 11, "0/10");
        let staged = commit(&base, 22, "0/20");
        let change = TableChange::between(&base, &staged).expect("expressible");
        let json = wire(&change);
        assert_eq!(
            json["requirements"],
            serde_json::json!([
                {"type": "assert-table-uuid", "uuid": base.uuid()},
                {"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": 11},
            ])
        );
        let actions: Vec<&str> = json["updates"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|u| u["action"].as_str().expect("an action"))
            .collect();
        assert_eq!(actions, ["add-snapshot", "set-snapshot-ref"]);
        assert_eq!(json["updates"][0]["snapshot"]["snapshot-id"], 22);
        assert_eq!(
            json["updates"][0]["snapshot"]["summary"]["lakewriter.lsn"],
            "0/20"
        );
        assert_eq!(json["updates"][1]["ref-name"], "main");
        assert_eq!(json["updates"][1]["type"], "branch");
        same_table(&apply(&base, &change), &staged);
    }

    #[test]
    fn an_upgrade_to_format_3_is_sent_and_a_downgrade_refused() {
        let base = commit(&table(), 11, "0/10");
        let staged = base
            .clone()
            .into_builder(None)
            .upgrade_format_version(FormatVersion::V3)
            .and_then(|b| b.build())
            .expect("an upgrade")
            .metadata;
        let change = TableChange::between(&base, &staged).expect("expressible");
        assert_eq!(
            wire(&change)["updates"][0],
            serde_json::json!({"action": "upgrade-format-version", "format-version": 3})
        );
        let applied = apply(&base, &change);
        assert_eq!(applied.format_version(), FormatVersion::V3);
        same_table(&applied, &staged);
        assert!(TableChange::between(&staged, &base).is_err());
    }

    #[test]
    fn the_first_snapshot_asserts_that_main_does_not_exist_yet() {
        let base = table();
        let staged = commit(&base, 7, "0/1");
        let change = TableChange::between(&base, &staged).expect("expressible");
        assert_eq!(
            wire(&change)["requirements"][1],
            serde_json::json!({"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": null})
        );
        same_table(&apply(&base, &change), &staged);
    }

    #[test]
    fn the_change_is_refused_by_a_table_another_writer_moved() {
        let base = commit(&table(), 11, "0/10");
        let staged = commit(&base, 22, "0/20");
        let change = TableChange::between(&base, &staged).expect("expressible");
        let moved = commit(&base, 33, "0/30");
        assert!(
            change
                .requirements
                .iter()
                .any(|r| r.check(Some(&moved)).is_err()),
            "a commit staged on snapshot 11 must not apply on 33"
        );
    }

    #[test]
    fn a_schema_change_adds_and_selects_the_new_schema_and_asserts_the_old_one() {
        let base = commit(&table(), 11, "0/10");
        let staged = base
            .clone()
            .into_builder(None)
            .add_current_schema(schema(&[(1, "id"), (2, "amount"), (3, "note")]))
            .and_then(|b| b.build())
            .expect("evolved")
            .metadata;
        let change = TableChange::between(&base, &staged).expect("expressible");
        let json = wire(&change);
        assert!(
            change
                .requirements
                .contains(&TableRequirement::CurrentSchemaIdMatch {
                    current_schema_id: base.current_schema_id()
                })
        );
        assert!(
            change
                .requirements
                .contains(&TableRequirement::LastAssignedFieldIdMatch {
                    last_assigned_field_id: 2
                })
        );
        assert_eq!(json["updates"][0]["action"], "add-schema");
        assert_eq!(
            json["updates"][1],
            serde_json::json!({"action": "set-current-schema", "schema-id": -1})
        );
        same_table(&apply(&base, &change), &staged);
        assert!(change.landed_in(&staged));
        assert!(!change.landed_in(&base));
    }

    #[test]
    fn expiry_removes_the_snapshots_the_staged_table_dropped() {
        let one = commit(&table(), 11, "0/10");
        let two = commit(&one, 22, "0/20");
        let base = commit(&two, 33, "0/30");
        let staged = base
            .clone()
            .into_builder(None)
            .remove_snapshots(&[22, 11])
            .build()
            .expect("expired")
            .metadata;
        let change = TableChange::between(&base, &staged).expect("expressible");
        assert_eq!(
            change.updates,
            [TableUpdate::RemoveSnapshots {
                snapshot_ids: vec![11, 22]
            }]
        );
        same_table(&apply(&base, &change), &staged);
        assert!(change.landed_in(&staged));
        assert!(!change.landed_in(&base));
    }

    #[test]
    fn a_commit_of_several_snapshots_adds_them_oldest_first() {
        let base = commit(&table(), 11, "0/10");
        let staged = commit(&commit(&base, 22, "0/20"), 33, "0/30");
        let change = TableChange::between(&base, &staged).expect("expressible");
        let added: Vec<i64> = change
            .updates
            .iter()
            .filter_map(|u| match u {
                TableUpdate::AddSnapshot { snapshot } => Some(snapshot.snapshot_id()),
                _ => None,
            })
            .collect();
        assert_eq!(added, [22, 33]);
        same_table(&apply(&base, &change), &staged);
    }

    #[test]
    fn properties_set_and_removed_are_sent_as_such() {
        let base = table();
        let staged = base
            .clone()
            .into_builder(None)
            .set_properties(HashMap::from([(
                "commit.manifest.min-count-to-merge".to_string(),
                "50".to_string(),
            )]))
            .and_then(|b| b.remove_properties(&["owner".to_string()]))
            .and_then(|b| b.build())
            .expect("properties")
            .metadata;
        let change = TableChange::between(&base, &staged).expect("expressible");
        same_table(&apply(&base, &change), &staged);
        assert!(change.landed_in(&staged));
        assert!(!change.landed_in(&base));
    }

    #[test]
    fn a_new_partition_spec_is_added_and_made_default() {
        let base = table();
        let spec = UnboundPartitionSpec::builder()
            .add_partition_field(1, "id_bucket", Transform::Bucket(4))
            .expect("a field")
            .build();
        let staged = base
            .clone()
            .into_builder(None)
            .add_default_partition_spec(spec)
            .and_then(|b| b.build())
            .expect("spec")
            .metadata;
        let change = TableChange::between(&base, &staged).expect("expressible");
        same_table(&apply(&base, &change), &staged);
    }

    #[test]
    fn a_commit_is_recognised_by_its_snapshot_even_under_a_later_one() {
        let base = commit(&table(), 11, "0/10");
        let staged = commit(&base, 22, "0/20");
        let change = TableChange::between(&base, &staged).expect("expressible");
        assert!(!change.landed_in(&base));
        assert!(change.landed_in(&staged));
        assert!(change.landed_in(&commit(&staged, 33, "0/30")));
        assert!(!change.landed_in(&commit(&base, 44, "0/20")));
    }

    #[test]
    fn what_no_update_can_say_is_refused_by_name() {
        let base = table();
        let moved = TableMetadataBuilder::new(
            schema(&[(1, "id"), (2, "amount")]),
            PartitionSpec::unpartition_spec(),
            SortOrder::unsorted_order(),
            "/elsewhere".to_string(),
            FormatVersion::V2,
            HashMap::new(),
        )
        .and_then(|b| b.build())
        .expect("a table")
        .metadata;
        let refused = TableChange::between(&base, &moved).expect_err("another table");
        assert!(refused.0.contains("uuid"), "{refused:?}");
    }
}
