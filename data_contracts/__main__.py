"""`python -m data_contracts > docs/tables.md` regenerates the table documentation."""

from data_contracts.docs import table_docs_markdown

print(table_docs_markdown(), end="")
