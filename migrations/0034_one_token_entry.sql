-- Tokens become one cost entry per attempt (the cost type `api_tokens`, unit `token`, the
-- quantity input plus output) instead of one per direction: the split is kept in two columns.
-- Half the rows for the same facts; a completion batch with usage on every item wrote two
-- entries an item.
ALTER TABLE cost_entries ADD COLUMN input_quantity NUMERIC CHECK (input_quantity >= 0),
                         ADD COLUMN output_quantity NUMERIC CHECK (output_quantity >= 0);
