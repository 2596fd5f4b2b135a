# egress-authz iRule: the BIG-IP keeps doing the mTLS handshake with the pod (client-ssl profile with
# peer-cert-mode require), and asks the egress-authz service what that certificate may do. The service
# validates the X.509-SVID, evaluates the Rego policy and answers over an HTTP sideband callout, which
# leaves the BIG-IP as mTLS through the internal virtual server's server-ssl profile (egress-authz.conf):
#   200 + X-Egress-Decision: allow + X-Egress-Snat-Pool: <pool>  ->  snatpool <pool>
#   200 allow without a pool                                       ->  reject (never leave unSNATed)
#   anything else (403, 400, error, timeout, garbage)              ->  reject
# The iRule never parses the certificate itself: SAN order, several SANs, critical flags and prefix
# tricks such as "bookinfo-evil" are the service's problem, decided in one place for Envoy and BIG-IP.
#
# Written in the Tcl subset that both the BIG-IP's Tcl 8.4 dialect and tclsh 8.6 understand (no
# starts_with/contains, no dict, no {*}, no lassign), so test/irule/harness.tcl runs this very file.

when RULE_INIT {
    # Where the decision service is: the name of a virtual server (recommended: vs_egress_authz_sideband,
    # an internal VS with a monitored pool of egress-authz instances and a server-ssl profile that
    # presents the BIG-IP's certificate to egress-authz and verifies egress-authz's). A bare
    # "address:port" would be plain TCP: anyone on that path could forge an allow.
    set static::egress_authz_target "/Common/vs_egress_authz_sideband"
    # Milliseconds to open the sideband connection, and for the whole answer to arrive.
    set static::egress_authz_connect_timeout_ms 300
    set static::egress_authz_answer_timeout_ms 1000
    # Seconds an unused sideband connection stays open (it is reused on renegotiation).
    set static::egress_authz_idle_s 30
    # Upper bound, in seconds, on how long a decision is cached; 0 turns the cache off. The service says
    # per answer how long it may be reused (X-Egress-Cache-Ttl; 0 when its policy reads the clock or
    # anything the key below does not cover) and the shorter of the two applies. The key is everything
    # the request sends: the chain's X509::hash values (MD5 fingerprints of certificates the client-ssl
    # profile verified), the virtual server, the client address and the destination. A policy change
    # reaches cached answers only after the TTL. Errors are never cached.
    set static::egress_authz_cache_s 10
    # Optional: what to send as X-Egress-Destination (the service behind this virtual server).
    set static::egress_authz_destination ""
    # Optional: a pool of remote syslog servers for one HSL line per decision ("" = local log only).
    set static::egress_authz_hsl_pool ""
    # The answer is a few headers and a short text: anything longer is not the service.
    set static::egress_authz_max_answer_bytes 8192
}

# Reads the service's answer and returns a list {status decision snat_pool decision_id reason keep_alive cache_ttl},
# or {} when it is not an answer this rule understands. Pure string work so that it behaves the same in
# every Tcl.
proc egress_authz_parse_answer { answer } {
    set head_end [string first "\r\n\r\n" $answer]
    if { $head_end < 0 } { return {} }
    set lines [split [string range $answer 0 [expr {$head_end - 1}]] "\n"]
    set status_line [string trimright [lindex $lines 0] "\r"]
    if { ![regexp {^HTTP/1\.([01]) ([0-9][0-9][0-9]) } "$status_line " -> minor status] } { return {} }
    set decision ""
    set pool ""
    set decision_id ""
    set reason ""
    set connection ""
    set length ""
    set ttl 0
    foreach line [lrange $lines 1 end] {
        set line [string trimright $line "\r"]
        if { ![regexp {^([A-Za-z0-9-]+):[ \t]*(.*)$} $line -> name value] } { return {} }
        set value [string trim $value " \t"]
        switch -- [string tolower $name] {
            x-egress-decision { set decision $value }
            x-egress-snat-pool { set pool $value }
            x-egress-decision-id { set decision_id $value }
            x-egress-reason { set reason $value }
            connection { set connection [string tolower $value] }
            x-egress-cache-ttl {
                # Anything but a plain number of seconds is "do not cache".
                if { [regexp {^[0-9]{1,6}$} $value] } { set ttl [expr {$value + 0}] } else { set ttl 0 }
            }
            content-length {
                if { $length ne "" || ![regexp {^[0-9]{1,6}$} $value] } { return {} }
                set length $value
            }
        }
    }
    if { $length eq "" } { return {} }
    if { [string length $answer] != [expr {$head_end + 4 + $length}] } { return {} }
    set keep_alive 1
    if { $connection eq "close" || ($minor eq "0" && $connection ne "keep-alive") } { set keep_alive 0 }
    return [list $status $decision $pool $decision_id $reason $keep_alive $ttl]
}

when CLIENT_ACCEPTED {
    # Hold the pod's first bytes until the handshake's decision is known: no server-side connection,
    # hence no SNAT choice, happens before that.
    set egress_authz_verdict "pending"
    set egress_authz_conn ""
    TCP::collect
}

when CLIENTSSL_HANDSHAKE {
    set egress_authz_verdict "pending"
    set started [clock clicks -milliseconds]
    set cert_hash ""
    set cache_key ""
    set decision "deny"
    set pool ""
    set decision_id "-"
    set reason ""
    set failure ""
    set cached 0
    set http_status "-"
    set request_id "-"

    if { [SSL::cert count] < 1 || [SSL::verify_result] != 0 } {
        set failure "no verified client certificate"
    } else {
        set cert_hash [X509::hash [SSL::cert 0]]
        # Every field the request below sends: an answer is reused only for the very same question.
        set cache_key ""
        for { set i 0 } { $i < [SSL::cert count] } { incr i } {
            append cache_key [X509::hash [SSL::cert $i]] " "
        }
        append cache_key "|[virtual name]|[IP::client_addr]|$static::egress_authz_destination"
        if { $static::egress_authz_cache_s > 0 } {
            set hit [table lookup -notouch -subtable egress_authz_decisions $cache_key]
            if { [llength $hit] == 4 } {
                set decision [lindex $hit 0]
                set pool [lindex $hit 1]
                set decision_id [lindex $hit 2]
                set reason [lindex $hit 3]
                set cached 1
            }
        }
    }

    if { $failure eq "" && !$cached } {
        set pem ""
        for { set i 0 } { $i < [SSL::cert count] } { incr i } {
            append pem [X509::whole [SSL::cert $i]]
        }
        set request_id "bigip-[format %08x [expr {int(rand() * 2147483647)}]][format %08x [expr {int(rand() * 2147483647)}]]"
        set request "POST /v1/sideband HTTP/1.1\r\nHost: egress-authz\r\nContent-Type: application/x-pem-file\r\nContent-Length: [string length $pem]\r\nConnection: keep-alive\r\nX-Request-Id: $request_id\r\nX-Egress-Virtual-Server: [virtual name]\r\nX-Egress-Client-Address: [IP::client_addr]\r\n"
        if { $static::egress_authz_destination ne "" } {
            append request "X-Egress-Destination: $static::egress_authz_destination\r\n"
        }
        append request "\r\n" $pem

        if { $egress_authz_conn eq "" } {
            set conn_status ""
            if { [catch { connect -protocol TCP -timeout $static::egress_authz_connect_timeout_ms -idle $static::egress_authz_idle_s -status conn_status $static::egress_authz_target } egress_authz_conn] } {
                set egress_authz_conn ""
            }
            if { $egress_authz_conn eq "" } { set failure "connect $conn_status" }
        }
        if { $failure eq "" } {
            set send_status ""
            if { [catch { send -timeout $static::egress_authz_connect_timeout_ms -status send_status $egress_authz_conn $request }] || $send_status ne "sent" } {
                set failure "send $send_status"
            }
        }
        if { $failure eq "" } {
            # Read until the headers are complete and then exactly Content-Length more bytes, so the
            # connection is left clean for the next request.
            set deadline [expr {$started + $static::egress_authz_answer_timeout_ms}]
            set answer ""
            set need -1
            while { 1 } {
                set left [expr {$deadline - [clock clicks -milliseconds]}]
                if { $left <= 0 } { set failure "answer timeout"; break }
                set chunk ""
                set recv_status ""
                if { [catch { recv -timeout $left -status recv_status $egress_authz_conn chunk }] } {
                    set failure "recv error"; break
                }
                append answer $chunk
                if { $need < 0 } {
                    set head_end [string first "\r\n\r\n" $answer]
                    if { $head_end >= 0 } {
                        if { [regexp -nocase {\r\nContent-Length:[ \t]*([0-9]{1,6})[ \t]*\r\n} [string range $answer 0 [expr {$head_end + 1}]] -> body_length] } {
                            set need [expr {$head_end + 4 + $body_length}]
                        } else {
                            set failure "answer without Content-Length"; break
                        }
                    }
                }
                if { $need >= 0 && [string length $answer] >= $need } { break }
                if { [string length $answer] > $static::egress_authz_max_answer_bytes } { set failure "answer too large"; break }
                if { $recv_status ne "received" && $recv_status ne "timeout" } { set failure "recv $recv_status"; break }
            }
        }
        set parsed {}
        if { $failure eq "" } {
            set parsed [call egress_authz_parse_answer $answer]
            if { [llength $parsed] != 7 } { set failure "malformed answer" }
        }
        if { $failure eq "" } {
            set http_status [lindex $parsed 0]
            set decision_id [lindex $parsed 3]
            set reason [lindex $parsed 4]
            if { ![regexp {^[A-Za-z0-9._:-]{1,64}$} $decision_id] } { set decision_id "-" }
            set answer_decision [lindex $parsed 1]
            set cache_ttl [lindex $parsed 6]
            if { $cache_ttl > $static::egress_authz_cache_s } { set cache_ttl $static::egress_authz_cache_s }
            if { $http_status eq "200" && $answer_decision eq "allow" } {
                set pool [lindex $parsed 2]
                if { $pool eq "" } {
                    # Releasing without snatpool would leave from the pod's own address, which the
                    # firewall must never see: an allow without a pool is refused, and not cached.
                    set decision "deny"
                    set reason "allow without a snat pool: rejected, never released unSNATed"
                    set cache_ttl 0
                } elseif { ![regexp {^[A-Za-z0-9_./-]{1,128}$} $pool] } {
                    set failure "unsafe snat pool name"
                    set pool ""
                } else {
                    set decision "allow"
                }
            } elseif { ($http_status eq "403" || $http_status eq "400") && $answer_decision eq "deny" } {
                set decision "deny"
            } else {
                set failure "unexpected answer: status $http_status decision $answer_decision"
            }
            if { $failure eq "" && $decision_id ne "-" && $cache_ttl > 0 } {
                table set -subtable egress_authz_decisions $cache_key [list $decision $pool $decision_id $reason] $cache_ttl $cache_ttl
            }
            if { ![lindex $parsed 5] } {
                catch { close $egress_authz_conn }
                set egress_authz_conn ""
            }
        }
        if { $failure ne "" && $egress_authz_conn ne "" } {
            # After an error the connection's state is unknown: never reuse it.
            catch { close $egress_authz_conn }
            set egress_authz_conn ""
        }
    }

    if { $failure ne "" } {
        set decision "deny"
        set pool ""
        set reason "egress-authz unavailable: $failure"
    }
    if { $decision eq "allow" } {
        if { $pool eq "" || [catch { snatpool $pool }] } {
            set decision "deny"
            set reason "snatpool $pool cannot be applied"
        }
    }

    # The reason is the service's text: keep the log line on one line and its quoting intact.
    regsub -all {[^ -~]} $reason "?" reason
    set reason [string map {"\"" "'"} $reason]
    set line "egress_authz decision=$decision id=$decision_id snat_pool=$pool cached=$cached status=$http_status request_id=$request_id cert_md5=$cert_hash client=[IP::client_addr] vs=[virtual name] ms=[expr {[clock clicks -milliseconds] - $started}] reason=\"[string range $reason 0 200]\""
    log local0.info $line
    if { $static::egress_authz_hsl_pool ne "" } {
        catch {
            set hsl [HSL::open -proto UDP -pool $static::egress_authz_hsl_pool]
            HSL::send $hsl "<134> $line\n"
        }
    }

    if { $decision ne "allow" } {
        # reject does not end the event by itself.
        reject
        event disable all
        return
    }
    set egress_authz_verdict "allow"
}

when CLIENT_DATA {
    # Data only flows after an allow for this very connection; anything else is closed here.
    if { $egress_authz_verdict ne "allow" } {
        log local0.warn "egress_authz decision=deny reason=\"data before an allow\" client=[IP::client_addr] vs=[virtual name]"
        reject
        event disable all
        return
    }
    TCP::release
}

when CLIENT_CLOSED {
    if { [info exists egress_authz_conn] && $egress_authz_conn ne "" } {
        catch { close $egress_authz_conn }
    }
}
