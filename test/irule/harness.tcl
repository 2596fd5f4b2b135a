# Runs the shipped iRule file, unchanged, in plain tclsh: the BIG-IP commands it uses are stubbed here,
# except the sideband ones (connect/send/recv/close), which do real TCP with the iRule's timeouts.
# One process is one virtual server seeing one or more client connections from the same pod.
#
#   tclsh harness.tcl -irule FILE -pem FILE -hash HASH [-connections N] [-handshakes N] [-client IP] [-verify N]
#                     [-virtuals "VS1 VS2 …"] [-clients "IP1 IP2 …"]
#                     [-set static::NAME VALUE]... [-vs NAME=HOST:PORT]...
# -virtuals / -clients: connection n is accepted on the n-th virtual server / from the n-th client (cycling);
# all connections share one `table`, as every virtual server of a BIG-IP does.
#
# Output, one record a line, for test/irule/irule.test.ts:
#   ACTION <n> snatpool <pool> | reject | release | collect
#   LOG <n> <facility> <text>
#   EVENT <n> <event> ok|return|error <message>
#   SIDEBAND <n> connect|send|recv|close <status> <detail>
#   CONNECTION <n> verdict=<allow|reject|held> pool=<pool|-> ms=<elapsed>
#   DONE ms=<total>

namespace eval h {
    variable events
    array set events {}
    variable conn 0
    variable opts
    array set opts {-connections 1 -handshakes 1 -client 10.1.1.10 -verify 0 -hash "" -virtuals "" -clients ""}
    variable sets {}
    variable vs_map
    array set vs_map {}
    variable table
    array set table {}
    variable pems {}
    variable disabled 0
    variable flag ""
    variable open_socks
    array set open_socks {}
}

proc h::now {} { clock milliseconds }
proc h::out {args} { puts [join $args " "]; flush stdout }

# --- arguments ---
for { set i 0 } { $i < [llength $argv] } { incr i } {
    set a [lindex $argv $i]
    switch -- $a {
        -set { lappend h::sets [lindex $argv [incr i]] [lindex $argv [incr i]] }
        -vs {
            set spec [lindex $argv [incr i]]
            set eq [string first "=" $spec]
            set h::vs_map([string range $spec 0 [expr {$eq - 1}]]) [string range $spec [expr {$eq + 1}] end]
        }
        default { set h::opts($a) [lindex $argv [incr i]] }
    }
}

# The client's certificate chain as the client-ssl profile would hold it, leaf first.
proc h::load_pems {file} {
    set f [open $file r]
    set text [read $f]
    tcl_close $f
    set blocks {}
    set re {-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?}
    foreach block [regexp -all -inline -- $re $text] {
        if { [string index $block end] ne "\n" } { append block "\n" }
        lappend blocks $block
    }
    return $blocks
}

# --- BIG-IP event model ---
proc when {event args} { set h::events($event) [lindex $args end] }

namespace eval static {}
foreach ns {IP TCP SSL X509 HSL} { namespace eval $ns {} }
proc call {name args} { uplevel 1 [linsert $args 0 $name] }

proc log {facility message} { h::out LOG $h::conn $facility $message }
proc reject {} { h::out ACTION $h::conn reject; set h::verdict reject }
proc snatpool {pool} { h::out ACTION $h::conn snatpool $pool; set h::pool $pool }
proc event {args} {
    if { $args eq "disable all" || $args eq "disable" } { set h::disabled 1; return }
    error "event $args: not stubbed"
}
proc h::nth {list default} {
    if { [llength $list] == 0 } { return $default }
    return [lindex $list [expr {($h::conn - 1) % [llength $list]}]]
}
proc virtual {args} {
    if { $args eq "name" } { return [h::nth $h::opts(-virtuals) "/Common/vs_aspenmesh-bookinfo-proxy-srv-mtls-svc"] }
    error "virtual $args: not stubbed"
}
proc IP::client_addr {} { return [h::nth $h::opts(-clients) $h::opts(-client)] }
proc TCP::client_port {} { return [expr {40000 + $h::conn}] }
proc TCP::collect {args} { h::out ACTION $h::conn collect; set h::held 1 }
proc TCP::release {args} {
    h::out ACTION $h::conn release
    set h::held 0
    if { $h::verdict ne "reject" } { set h::verdict allow }
}
proc SSL::cert {what} {
    if { $what eq "count" } { return [llength $h::pems] }
    if { $what >= 0 && $what < [llength $h::pems] } { return "cert$what" }
    return ""
}
proc SSL::verify_result {} { return $h::opts(-verify) }
proc X509::whole {cert} { return [lindex $h::pems [string range $cert 4 end]] }
proc X509::hash {cert} { return $h::opts(-hash) }
proc table {sub args} {
    set subtable ""
    while { [string index [lindex $args 0] 0] eq "-" } {
        set o [lindex $args 0]
        set args [lrange $args 1 end]
        if { $o eq "-subtable" } { set subtable [lindex $args 0]; set args [lrange $args 1 end] }
    }
    set key "$subtable/[lindex $args 0]"
    switch -- $sub {
        lookup {
            if { [info exists h::table($key)] && [lindex $h::table($key) 0] > [h::now] } {
                return [lindex $h::table($key) 1]
            }
            return ""
        }
        set {
            set timeout [lindex $args 2]
            if { $timeout eq "" } { set timeout 180 }
            set h::table($key) [list [expr {[h::now] + 1000 * $timeout}] [lindex $args 1]]
            return [lindex $args 1]
        }
        delete { unset -nocomplain h::table($key); return "" }
    }
    error "table $sub: not stubbed"
}
proc HSL::open {args} { return "hsl0" }
proc HSL::send {handle message} { h::out HSL $h::conn $message }

# --- sideband: real TCP ---
rename close tcl_close

# Splits "-opt value ... rest" for the options that take a value; flags (-eol, -peek) map to 1.
proc h::options {argsVar takes flags} {
    upvar 1 $argsVar a
    array set o {}
    while { [llength $a] > 0 && [string index [lindex $a 0] 0] eq "-" } {
        set name [lindex $a 0]
        if { [lsearch -exact $flags $name] >= 0 } {
            set o($name) 1
            set a [lrange $a 1 end]
        } elseif { [lsearch -exact $takes $name] >= 0 } {
            set o($name) [lindex $a 1]
            set a [lrange $a 2 end]
        } else {
            error "unknown option $name"
        }
    }
    return [array get o]
}

proc h::wait {sock kind ms} {
    set h::flag ""
    fileevent $sock $kind [list set ::h::flag ready]
    set timer [after [expr {$ms < 0 ? 0 : $ms}] [list set ::h::flag timeout]]
    vwait ::h::flag
    after cancel $timer
    fileevent $sock $kind {}
    return [expr {$h::flag eq "ready"}]
}

proc connect {args} {
    array set o [h::options args {-protocol -timeout -idle -status -myaddr -myport -tos} {}]
    if { [info exists o(-status)] } { upvar 1 $o(-status) status }
    set status "failed"
    set target [lindex $args 0]
    if { [info exists h::vs_map($target)] } { set target $h::vs_map($target) }
    set colon [string last ":" $target]
    set host [string range $target 0 [expr {$colon - 1}]]
    set port [string range $target [expr {$colon + 1}] end]
    # BIG-IP's default connect timeout is long; the iRule must pass its own.
    set timeout [expr {[info exists o(-timeout)] ? $o(-timeout) : 30000}]
    if { [catch { socket -async $host $port } sock] } {
        h::out SIDEBAND $h::conn connect failed [list $sock]
        return ""
    }
    set ready [h::wait $sock writable $timeout]
    set err [fconfigure $sock -error]
    if { !$ready || $err ne "" } {
        catch { tcl_close $sock }
        set status [expr {$ready ? "failed" : "timeout"}]
        h::out SIDEBAND $h::conn connect $status [list $err]
        return ""
    }
    fconfigure $sock -blocking 0 -translation binary -buffering none
    set h::open_socks($sock) 1
    set status "connected"
    h::out SIDEBAND $h::conn connect connected $target
    return $sock
}

proc send {args} {
    array set o [h::options args {-timeout -status} {}]
    if { [info exists o(-status)] } { upvar 1 $o(-status) status }
    if { [lindex $args 0] eq "--" } { set args [lrange $args 1 end] }
    set sock [lindex $args 0]
    set data [lindex $args 1]
    if { ![info exists h::open_socks($sock)] } { error "send: no such sideband connection $sock" }
    if { [catch { puts -nonewline $sock $data; flush $sock } err] } {
        set status "closed"
        h::out SIDEBAND $h::conn send closed [list $err]
        return 0
    }
    set status "sent"
    h::out SIDEBAND $h::conn send sent [string length $data]
    return [string length $data]
}

proc recv {args} {
    array set o [h::options args {-timeout -status} {-eol -peek}]
    if { [info exists o(-status)] } { upvar 1 $o(-status) status }
    if { [info exists o(-eol)] || [info exists o(-peek)] } { error "recv -eol/-peek: not stubbed" }
    set nchars ""
    set var ""
    switch -- [llength $args] {
        1 { set sock [lindex $args 0] }
        2 {
            if { [info exists h::open_socks([lindex $args 1])] } {
                set nchars [lindex $args 0]; set sock [lindex $args 1]
            } else {
                set sock [lindex $args 0]; set var [lindex $args 1]
            }
        }
        3 { set nchars [lindex $args 0]; set sock [lindex $args 1]; set var [lindex $args 2] }
        default { error "recv: wrong arguments" }
    }
    if { ![info exists h::open_socks($sock)] } { error "recv: no such sideband connection $sock" }
    # Without -timeout the BIG-IP does not wait at all.
    set timeout [expr {[info exists o(-timeout)] ? $o(-timeout) : 0}]
    set deadline [expr {[h::now] + $timeout}]
    set data ""
    while { 1 } {
        if { $nchars eq "" } {
            append data [read $sock]
        } else {
            append data [read $sock [expr {$nchars - [string length $data]}]]
        }
        if { $nchars ne "" && [string length $data] >= $nchars } { set status received; break }
        if { $nchars eq "" && [string length $data] > 0 } { set status received; break }
        if { [eof $sock] } { set status closed; break }
        set left [expr {$deadline - [h::now]}]
        if { $left <= 0 } { set status timeout; break }
        h::wait $sock readable $left
    }
    h::out SIDEBAND $h::conn recv $status [string length $data]
    if { $var ne "" } {
        upvar 1 $var v
        set v $data
        return [string length $data]
    }
    return $data
}

proc close {sock} {
    if { ![info exists h::open_socks($sock)] } { error "close: no such sideband connection $sock" }
    unset h::open_socks($sock)
    catch { tcl_close $sock }
    h::out SIDEBAND $h::conn close ok $sock
}

# --- run ---
set h::pems [h::load_pems $h::opts(-pem)]
source $h::opts(-irule)

proc h::run_event {event} {
    if { $h::disabled || ![info exists h::events($event)] } { return }
    set code [catch { uplevel #0 $h::events($event) } result]
    switch -- $code {
        0 { h::out EVENT $h::conn $event ok }
        2 { h::out EVENT $h::conn $event return }
        default {
            # A Tcl error aborts the connection on a BIG-IP (a reset): closed, but logged as a bug here.
            h::out EVENT $h::conn $event error [list $result]
            set h::verdict reject
            set h::disabled 1
        }
    }
}

set h::started [h::now]
h::run_event RULE_INIT
foreach {name value} $h::sets { set $name $value }
set h::baseline [info globals]

for { set h::conn 1 } { $h::conn <= $h::opts(-connections) } { incr h::conn } {
    # Every client connection starts with fresh connection variables.
    foreach g [info globals] {
        if { [lsearch -exact $h::baseline $g] < 0 } { unset -nocomplain ::$g }
    }
    set h::disabled 0
    set h::verdict held
    set h::pool "-"
    set h::held 0
    set t0 [h::now]
    h::run_event CLIENT_ACCEPTED
    # More than one handshake on a connection is a renegotiation: each one is decided again.
    for { set hs 0 } { $hs < $h::opts(-handshakes) } { incr hs } { h::run_event CLIENTSSL_HANDSHAKE }
    # The pod sends its first bytes (the proxy CONNECT) once the handshake is done.
    if { !$h::disabled && $h::held } { h::run_event CLIENT_DATA }
    h::run_event CLIENT_CLOSED
    h::out CONNECTION $h::conn verdict=$h::verdict pool=$h::pool ms=[expr {[h::now] - $t0}]
}
foreach sock [array names h::open_socks] { catch { tcl_close $sock } }
h::out DONE ms=[expr {[h::now] - $h::started}]
