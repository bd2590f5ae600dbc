# kappa's jq built-ins (see `man transform`, BUILT-INS). Times are epoch milliseconds.

# The start of the window of width $d ("5m", "1h", or ms) that holds this ms timestamp.
def ms_floor($d): ($d | duration_ms) as $w | . - ((. % $w) + $w) % $w;

# Great-circle distance in metres between two points given in degrees.
def haversine($lat1; $lon1; $lat2; $lon2):
  0.017453292519943295 as $r
  | ((($lat2 - $lat1) * $r / 2) | sin) as $a
  | ((($lon2 - $lon1) * $r / 2) | sin) as $b
  | ($a * $a + (($lat1 * $r) | cos) * (($lat2 * $r) | cos) * $b * $b) as $h
  | 2 * 6371008.8 * ($h | sqrt | asin);

# The same for a pair of points: [[lat, lon], [lat, lon]] or [{lat, lon}, {lat, lon}].
def haversine:
  def ll: if type == "object" then [.lat, .lon] else . end;
  (.[0] | ll) as [$a, $b] | (.[1] | ll) as [$c, $d] | haversine($a; $b; $c; $d);
