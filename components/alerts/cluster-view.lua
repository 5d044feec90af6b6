-- What a node's own CLUSTER NODES says that CLUSTER INFO does not: the exporter runs this at
-- every scrape (`--script`, read-only) and serves each pair as
-- redis_script_values{key="..."}.
--   open_slots: slots this node marks migrating or importing. A move the bootstrap left open
--     (its run failed) is finished by the next update; left open, clients bounce between two
--     nodes on those slots.
--   slot_holders_without_address: nodes this node lists `noaddr` that hold slots. A node met
--     at a known address under another ID loses its address in its peers' view, and Redis
--     never fails a node without an address: its slots would wait for a failover that never
--     comes, while every node says cluster_state:ok.
local open, unaddressed = 0, 0
for line in string.gmatch(redis.call("CLUSTER", "NODES"), "[^\n]+") do
  local fields = {}
  for field in string.gmatch(line, "%S+") do
    fields[#fields + 1] = field
  end
  local holds = false
  for i = 9, #fields do
    if string.sub(fields[i], 1, 1) == "[" then
      if string.find(fields[3], "myself", 1, true) then
        open = open + 1
      end
    else
      holds = true
    end
  end
  if holds and string.find(fields[3], "noaddr", 1, true) then
    unaddressed = unaddressed + 1
  end
end
return { "open_slots", tostring(open), "slot_holders_without_address", tostring(unaddressed) }
