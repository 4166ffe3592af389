std = "ngx_lua"
max_line_length = 120
unused_args = false
redefined = false
exclude_files = { ".venv/**" }
