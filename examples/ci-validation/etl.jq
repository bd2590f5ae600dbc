# The ETL under test: speeds in km/h, and 1 for a reading above the limit (160 km/h).
.speed_kmh = (.speed * 1.609 | round)
| .speeding = (if .speed_kmh > 160 then 1 else 0 end)
