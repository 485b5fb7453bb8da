"""JSON Schemas (draft 2020-12) shipped with CentOps; see the *.json files here."""
