-- Echo every byte back: the simplest handler, and the TCP echo benchmark endpoint.
return {
  on_data = function(conn, data)
    conn:write(data)
  end,
}
